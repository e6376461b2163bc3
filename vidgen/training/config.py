"""The LoRA trainer's typed configuration: a YAML file, then ``--section.key value`` overrides.

``configs/lora_example.yaml`` documents every key. Unknown keys and values of the wrong type are
errors that name the key, not silent defaults.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

TIMESTEP_SAMPLING = ("uniform", "logit_normal", "mode")
DEFAULT_TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]


@dataclass
class DataConfig:
    path: str = ""
    video_column: str | None = None
    caption_column: str | None = None
    buckets: list = field(default_factory=lambda: ["17x64x64"])
    fps: float = 8.0
    cache_dir: str | None = None  # default: <data.path>/.vidgen_cache
    max_sequence_length: int | None = None


@dataclass
class LoraAdapterConfig:
    rank: int = 16
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list = field(default_factory=lambda: list(DEFAULT_TARGET_MODULES))


@dataclass
class TextualInversionConfig:
    """New words learned as input embeddings of the frozen text encoder, beside the LoRA."""

    tokens: list = field(default_factory=list)  # words the tokenizer does not know, e.g. [diagonally]
    initializer: list = field(default_factory=list)  # per token: known words to start from ("right down")
    learning_rate: float | None = None  # default: train.learning_rate
    num_vectors: int = 1  # input vectors per word: word, word_1, .. (diffusers' multi-vector words)


@dataclass
class TextEncoderLoraConfig:
    """LoRA adapters on the text encoder too (rank 0: off). The encoder is then run at every step, so
    a caption's encoding can change: what a frozen encoder mixes between a prompt's phrases (a new
    word's phrase taking the other object's motion) can be trained away."""

    rank: int = 0
    alpha: float | None = None  # default: the rank
    target_modules: list = field(default_factory=lambda: ["q", "k", "v", "o"])  # T5's attention
    learning_rate: float | None = None  # default: train.learning_rate


@dataclass
class TrainConfig:
    max_steps: int = 500
    batch_size: int = 4  # per process and micro-step
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    lr_scheduler: str = "constant_with_warmup"
    lr_warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"  # no | fp16 | bf16
    gradient_checkpointing: bool = False
    caption_dropout: float = 0.1
    first_frame_p: float = 0.0  # share of samples trained as image-to-video (latent frame 0 given)
    vdt_mask_p: float = 0.0  # share of samples trained with VDT's random task masks
    # Noise levels: u in (0, 1) drawn by diffusers' compute_density_for_timestep_sampling, then sent
    # through the scheduler's shift. uniform | logit_normal (SD3: sigmoid of N(logit_mean, logit_std);
    # a positive mean trains more at high noise, where layout and motion are decided) | mode.
    timestep_sampling: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    motion_weight: float = 0.0  # extra loss weight on tokens whose clean latent changes between frames
    # Captions of two objects in the Shapes grammar ("a red circle moves diagonally and a blue square
    # moves down"): weight of a loss that draws each object's latent tokens (found by its color in the
    # clip) to its own phrase in the DiT's text cross-attention, not the other's (0: off).
    binding_weight: float = 0.0


@dataclass
class CheckpointConfig:
    every: int = 100
    keep_last: int = 2
    resume: str = "latest"  # latest | none


@dataclass
class ValidationConfig:
    prompts: list = field(default_factory=list)
    every: int = 0  # 0: only at the end (when prompts are given)
    num_inference_steps: int = 20
    guidance_scale: float = 2.0  # the pipelines' DEFAULT_GUIDANCE_SCALE
    num_frames: int | None = None
    height: int | None = None
    width: int | None = None
    seed: int = 0


@dataclass
class LoggingConfig:
    every: int = 10
    report_to: str = "auto"  # auto (tensorboard when installed) | tensorboard | none


@dataclass
class LoraTrainingConfig:
    pretrained_model: str = "default"  # a pipeline folder, or "default" for the embedded model
    output_dir: str = ""
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraAdapterConfig = field(default_factory=LoraAdapterConfig)
    textual_inversion: TextualInversionConfig = field(default_factory=TextualInversionConfig)
    text_encoder_lora: TextEncoderLoraConfig = field(default_factory=TextEncoderLoraConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoints: CheckpointConfig = field(default_factory=CheckpointConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        t, ti, te = self.train, self.textual_inversion, self.text_encoder_lora
        if not self.output_dir:
            raise ValueError("output_dir must be set")
        if not self.data.path:
            raise ValueError("data.path must be set")
        rules = [
            (self.lora.rank >= 1, f"lora.rank must be >= 1; got {self.lora.rank}"),
            (self.lora.alpha > 0, f"lora.alpha must be > 0; got {self.lora.alpha}"),
            (0 <= self.lora.dropout < 1, f"lora.dropout must be in [0, 1); got {self.lora.dropout}"),
            (bool(self.lora.target_modules), "lora.target_modules must name at least one module"),
            (t.max_steps >= 1, f"train.max_steps must be >= 1; got {t.max_steps}"),
            (t.batch_size >= 1, f"train.batch_size must be >= 1; got {t.batch_size}"),
            (t.gradient_accumulation_steps >= 1, "train.gradient_accumulation_steps must be >= 1"),
            (t.learning_rate > 0, f"train.learning_rate must be > 0; got {t.learning_rate}"),
            (t.mixed_precision in ("no", "fp16", "bf16"), "train.mixed_precision must be no, fp16 or bf16"),
            (0 <= t.caption_dropout <= 1, "train.caption_dropout must be in [0, 1]"),
            (0 <= t.first_frame_p <= 1, "train.first_frame_p must be in [0, 1]"),
            (0 <= t.vdt_mask_p <= 1 - t.first_frame_p, "train.vdt_mask_p must be in [0, 1 - first_frame_p]"),
            (t.timestep_sampling in TIMESTEP_SAMPLING,
             f"train.timestep_sampling must be one of {', '.join(TIMESTEP_SAMPLING)}; got {t.timestep_sampling!r}"),
            (t.logit_std > 0, f"train.logit_std must be > 0; got {t.logit_std}"),
            (t.motion_weight >= 0, f"train.motion_weight must be >= 0; got {t.motion_weight}"),
            (t.binding_weight >= 0, f"train.binding_weight must be >= 0 (0: off); got {t.binding_weight}"),
            (self.checkpoints.every >= 1, "checkpoints.every must be >= 1"),
            (self.checkpoints.keep_last >= 1, "checkpoints.keep_last must be >= 1"),
            (self.checkpoints.resume in ("latest", "none"), "checkpoints.resume must be latest or none"),
            (self.validation.every >= 0, "validation.every must be >= 0"),
            (self.data.fps > 0, f"data.fps must be > 0; got {self.data.fps}"),
            (not ti.initializer or len(ti.initializer) == len(ti.tokens),
             "textual_inversion.initializer must be empty or name words for every one of textual_inversion.tokens"),
            (ti.learning_rate is None or ti.learning_rate > 0, "textual_inversion.learning_rate must be > 0"),
            (ti.num_vectors >= 1, f"textual_inversion.num_vectors must be >= 1; got {ti.num_vectors}"),
            (te.rank >= 0, f"text_encoder_lora.rank must be >= 0 (0: no text-encoder LoRA); got {te.rank}"),
            (te.alpha is None or te.alpha > 0, f"text_encoder_lora.alpha must be > 0; got {te.alpha}"),
            (te.rank == 0 or bool(te.target_modules), "text_encoder_lora.target_modules must name at least one module"),
            (te.learning_rate is None or te.learning_rate > 0, "text_encoder_lora.learning_rate must be > 0"),
            (self.logging.report_to in ("auto", "tensorboard", "none"), "logging.report_to: auto|tensorboard|none"),
        ]  # fmt: skip
        lists = (
            ("validation.prompts", self.validation.prompts, (str,)),
            ("lora.target_modules", self.lora.target_modules, (str,)),
            ("data.buckets", self.data.buckets, (str, list)),
            ("textual_inversion.tokens", ti.tokens, (str,)),
            ("textual_inversion.initializer", ti.initializer, (str,)),
            ("text_encoder_lora.target_modules", te.target_modules, (str,)),
        )
        for name, values, types in lists:
            rules.append((all(isinstance(v, types) for v in values), f"{name} must be a list of strings"))
        for ok, message in rules:
            if not ok:
                raise ValueError(message)


def load_config(path: str | Path | None, overrides: list[str] = ()) -> LoraTrainingConfig:
    """Read ``path`` (YAML), apply ``["--section.key", "value", ...]`` overrides, validate."""
    data = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"--config {path} does not exist")
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ValueError(f"--config {path}: the top level must be a mapping of keys")
    config = _build(LoraTrainingConfig, data, "")
    for key, value in _pairs(overrides):
        _set(config, key, value)
    config.validate()
    return config


def _pairs(overrides):
    overrides = list(overrides)
    i = 0
    while i < len(overrides):
        key = overrides[i]
        if not key.startswith("--"):
            raise ValueError(f"override {key!r}: expected --section.key value")
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        elif i + 1 < len(overrides):
            value = overrides[i + 1]
            i += 2
        else:
            raise ValueError(f"override {key}: missing a value")
        yield key[2:].replace("-", "_"), value


def _build(cls, data: dict, prefix: str):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(
            f"unknown config key(s) {sorted(prefix + k for k in unknown)}; known: {sorted(names)}"
        )
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ValueError(f"{prefix}{name} must be a mapping of keys")
            kwargs[name] = _build(hint, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, hint, prefix + name)
    return cls(**kwargs)


def _set(config, dotted: str, text: str) -> None:
    *sections, name = dotted.split(".")
    target = config
    for section in sections:
        if not hasattr(target, section) or not dataclasses.is_dataclass(getattr(target, section)):
            raise ValueError(f"override --{dotted}: unknown section {section!r}")
        target = getattr(target, section)
    hints = typing.get_type_hints(type(target))
    if name not in hints or dataclasses.is_dataclass(hints[name]):
        raise ValueError(f"override --{dotted}: unknown key")
    setattr(target, name, _coerce(yaml.safe_load(text), hints[name], dotted, text))


def _coerce(value, hint, name: str, text: str | None = None):
    """Check ``value`` against the annotation (``int``, ``float``, ``bool``, ``str``, ``list``, optional)."""
    optional = type(None) in typing.get_args(hint)
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
    if value is None:
        if optional:
            return None
        raise ValueError(f"{name} must not be empty")
    try:
        if base is bool:
            if not isinstance(value, bool):
                raise TypeError
            return value
        if base is int:
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise TypeError
            return int(float(value))
        if base is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)  # also YAML's "1e-4", which it reads as a string
        if base is str:
            return str(value if text is None else text)
        if base is list:
            return list(value) if isinstance(value, list | tuple) else [value]
    except (TypeError, ValueError, OverflowError):
        pass
    else:
        return value
    raise ValueError(f"{name} must be {getattr(base, '__name__', base)}; got {value!r}")
