"""LoRA fine-tuning of a vidgen pipeline's transformer (peft + accelerate), resumable to the bit.

    vidgen train-lora --config configs/lora_example.yaml [--train.max_steps 300 ...]
    accelerate launch scripts/train_lora.py --config configs/lora_example.yaml
    accelerate launch --multi_gpu --num_processes 2 scripts/train_lora.py --config ...   # data parallel
                                                   (on a machine without GPUs this runs 2 CPU processes on gloo)

The model is any vidgen pipeline folder: the embedded default, or an LTX-Video folder in diffusers'
format. The result, ``<output_dir>/pytorch_lora_weights.safetensors``, is in diffusers' LoRA format:
``pipe.load_lora_weights(output_dir)``; CLI ``vidgen t2v --lora <output_dir> --lora-scale 1``.

New words (``textual_inversion.tokens: [diagonally]``) are added to the tokenizer and learned as input
embeddings of the frozen text encoder beside the LoRA: without them a word the tokenizer does not know
reaches the model as ``<unk>``, the same vector as every other unknown word, and the LoRA alone has to
tell the concept from the videos. They are written as ``learned_embeds.safetensors`` (diffusers'
textual-inversion format): ``pipe.load_textual_inversion(output_dir)``; the CLI's ``--lora`` loads them
from the same folder.

Reproducibility is by construction: the data order is a function of ``(seed, epoch)`` and every
sample's noise, noise level, caption dropout and mask a function of ``(seed, step, position in the
global batch)``. A run resumed from a checkpoint (even after SIGKILL) therefore ends with the same
weights as an uninterrupted one, and N processes with micro-batch B/N compute the same global batch as
one process with micro-batch B (with ``lora.dropout: 0``: dropout masks are drawn per micro-batch).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import importlib.util
import json
import math
import os
import random
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, gather_object
from diffusers.optimization import get_scheduler
from diffusers.training_utils import compute_density_for_timestep_sampling
from peft import LoraConfig, inject_adapter_in_model
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..data.video_dataset import SkipMedia, discover_media, load_clip, parse_buckets
from ..masks import sample_training_mask
from ..pipelines.common import LEARNED_EMBEDS_NAME
from .cache import build_cache, collect_cache, empty_prompt_entry, warn_skipped, write_atomic
from .config import LoraTrainingConfig, TextEncoderLoraConfig, TextualInversionConfig, load_config
from .distributed import average_gradients
from .grounding import CrossAttentionProbe, binding_loss, binding_targets, caption_phrases, owners_by_color

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
# Keys that may change between a run and its resumption; any other change is refused.
RESUMABLE_CHANGES = ("train.max_steps", "checkpoints", "validation", "logging")


def parse_args(argv=None) -> LoraTrainingConfig:
    p = argparse.ArgumentParser(
        prog="vidgen train-lora",
        description="LoRA fine-tuning of a vidgen pipeline.",
        epilog="Any config key can be overridden: --section.key value (e.g. --train.max_steps 300 --lora.rank 8); "
        "configs/lora_example.yaml documents every key.",
    )
    p.add_argument("--config", default=None, help="YAML file (see configs/lora_example.yaml)")
    args, overrides = p.parse_known_args(argv)
    return load_config(args.config, overrides)


# --------------------------------------------------------------------------------------------------
# 1. Model.
def load_pipeline(config: LoraTrainingConfig, device):
    import diffusers
    import transformers

    from .. import DEFAULT_MODEL, VidGenPipeline

    for library in (diffusers, transformers):  # keep the console for the training progress bar
        library.utils.logging.disable_progress_bar()
    path = DEFAULT_MODEL if config.pretrained_model == "default" else config.pretrained_model
    if not os.path.isdir(path):
        raise FileNotFoundError(f"pretrained_model {path}: no such pipeline folder")
    pipe = VidGenPipeline.from_pretrained(path).to(device)
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.vae, pipe.text_encoder, pipe.transformer):
        module.requires_grad_(False).eval()
    return pipe


def add_lora(transformer, config: LoraTrainingConfig) -> LoraConfig:
    lora = LoraConfig(
        r=config.lora.rank, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
        target_modules=list(config.lora.target_modules), init_lora_weights=True,
    )  # fmt: skip
    try:
        transformer.add_adapter(lora)
    except ValueError as e:
        raise ValueError(f"lora.target_modules {config.lora.target_modules}: {str(e).splitlines()[0]}") from e
    if config.train.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    transformer.train()
    return lora


def add_text_encoder_lora(text_encoder, config: TextEncoderLoraConfig) -> LoraConfig:
    """LoRA adapters on the (frozen) text encoder, injected with peft itself: transformers'
    ``add_adapter`` refuses the peft releases that diffusers supports."""
    lora = LoraConfig(
        r=config.rank, lora_alpha=config.alpha or config.rank, target_modules=list(config.target_modules),
        init_lora_weights=True,
    )  # fmt: skip
    try:
        inject_adapter_in_model(lora, text_encoder, adapter_name="default")
    except ValueError as e:
        raise ValueError(
            f"text_encoder_lora.target_modules {config.target_modules}: {str(e).splitlines()[0]}"
        ) from e
    return lora


def encode_captions(
    pipe, captions, embeds: torch.Tensor, text_mask: torch.Tensor, words=None, empty_too=False
):
    """A micro-batch's captions encoded again, through the learned words and the text encoder's LoRA
    (whatever trains in the text path). ``None`` marks a caption dropped for guidance: it keeps the
    cached empty prompt, or with ``empty_too`` (a text-encoder LoRA, which changes the empty prompt's
    encoding too) is encoded as ``""``. Returns ``(B, T, C)`` embeddings and the ``(B, T)`` mask."""
    if empty_too:
        captions = ["" if c is None else c for c in captions]
    keep = [i for i, c in enumerate(captions) if c is not None]
    if not keep:
        return embeds, text_mask
    encoder = pipe.text_encoder
    inputs = pipe.tokenize([captions[i] for i in keep], embeds.shape[1])  # as the pipelines do
    ids = inputs.input_ids.to(encoder.device)
    if words is not None:
        encoded = encoder(inputs_embeds=words.embed(ids, encoder))[0]  # (b, T, C)
    else:
        encoded = encoder(ids)[0]
    embeds = embeds.to(encoded.device, encoded.dtype).clone()
    embeds[keep] = encoded
    text_mask = text_mask.clone()
    text_mask[keep] = inputs.attention_mask.bool().to(text_mask.device)
    return embeds, text_mask


# --------------------------------------------------------------------------------------------------
# 1b. New words (textual inversion).
class LearnedWords(torch.nn.Module):
    """Trainable input embeddings ``(W * K, D)`` of ``W`` words added to the pipeline's tokenizer, ``K``
    vectors each (``num_vectors``).

    The text encoder stays frozen, its own embedding rows too: while training, the new words' input
    vectors come from ``weight`` (so only they get gradients, through the frozen encoder); ``write_into``
    copies them into the resized embedding table for validation and the result. Each word starts at the
    mean embedding of its ``initializer`` words (``"right down"`` for a diagonal motion), or of the
    whole vocabulary; with as many vectors as initializer words, vector i starts at word i. A word of
    several vectors is the tokens ``word word_1 .. word_{K-1}``, as diffusers names them: the
    pipelines' ``tokenize`` (``maybe_convert_prompt``) writes them for ``word``."""

    def __init__(self, pipe, config: TextualInversionConfig):
        super().__init__()
        tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
        table = encoder.get_input_embeddings().weight.detach()  # (V, D)
        vocab = tokenizer.get_vocab()
        n = config.num_vectors
        starts, self.tokens = [], []
        for k, word in enumerate(config.tokens):
            names = [word] + [f"{word}_{i}" for i in range(1, n)]
            if len(word.split()) != 1 or any(t in vocab for t in names):
                raise ValueError(
                    f"textual_inversion.tokens: {word!r} must be one word the tokenizer does not know yet"
                )
            self.tokens += names
            if not config.initializer:
                starts += [table.float().mean(0)] * n
                continue
            ids = tokenizer(config.initializer[k], add_special_tokens=False).input_ids
            if not ids or tokenizer.unk_token_id in ids:
                raise ValueError(
                    f"textual_inversion.initializer {config.initializer[k]!r}: every word must be known to the tokenizer"
                )
            starts += [table[i].float() for i in ids] if len(ids) == n else [table[ids].float().mean(0)] * n
        tokenizer.add_tokens(self.tokens)
        self.words, self.num_vectors = list(config.tokens), n
        self.ids = tokenizer.convert_tokens_to_ids(self.tokens)
        if max(self.ids) >= table.shape[0]:  # T5 checkpoints often have spare rows already
            encoder.resize_token_embeddings(max(self.ids) + 1, mean_resizing=False)
        encoder.get_input_embeddings().requires_grad_(False)
        self.weight = torch.nn.Parameter(torch.stack(starts))  # (W * K, D)
        self.write_into(encoder)

    def embed(self, ids: torch.Tensor, encoder) -> torch.Tensor:  # (B, T) -> (B, T, D)
        x = encoder.get_input_embeddings()(ids)
        for k, i in enumerate(self.ids):
            x = torch.where((ids == i)[..., None], self.weight[k].to(x.dtype), x)
        return x

    def encode(self, pipe, captions, embeds: torch.Tensor, text_mask: torch.Tensor):
        """A micro-batch's captions encoded again through the learned words (``None``: dropped for
        guidance, the cached empty prompt kept). ``(B, T, C)`` embeddings and ``(B, T)`` mask."""
        return encode_captions(pipe, captions, embeds, text_mask, words=self)

    @torch.no_grad()
    def write_into(self, encoder) -> None:
        table = encoder.get_input_embeddings().weight
        table[self.ids] = self.weight.to(table.dtype)

    def state_dict_for_diffusers(self) -> dict[str, torch.Tensor]:
        """``{word: (D,)}``, or ``{word: (K, D)}`` for words of several vectors (diffusers' format)."""
        rows = self.weight.detach().float().cpu().view(len(self.words), self.num_vectors, -1)
        return {
            w: (rows[k, 0] if self.num_vectors == 1 else rows[k]).contiguous()
            for k, w in enumerate(self.words)
        }


# --------------------------------------------------------------------------------------------------
# 2. Data: discover, cache once, order.
def prepare_data(config: LoraTrainingConfig, pipe, accelerator: Accelerator):
    p_t, p = pipe.patch_size
    buckets = parse_buckets(
        config.data.buckets, pipe.vae_temporal_compression_ratio * p_t, pipe.vae_spatial_compression_ratio * p
    )
    items, problems = discover_media(config.data.path, config.data.video_column, config.data.caption_column)
    text_length = config.data.max_sequence_length or min(
        128, getattr(pipe.tokenizer, "model_max_length", 128)
    )
    data_root = Path(config.data.path) if Path(config.data.path).is_dir() else Path(config.data.path).parent
    cache_dir = Path(config.data.cache_dir or data_root / ".vidgen_cache")
    args = (buckets, config.data.fps, text_length)
    folder, failed = build_cache(
        pipe,
        items,
        *args,
        cache_dir,
        accelerator.device,
        accelerator.process_index,
        accelerator.num_processes,
    )
    accelerator.wait_for_everyone()
    problems += gather_object(failed) if accelerator.num_processes > 1 else failed
    if accelerator.is_main_process:
        warn_skipped(problems)
    clips = collect_cache(folder, items, *args)
    if not clips:
        raise ValueError(f"data.path {config.data.path}: no usable clips ({len(problems)} file(s) skipped)")
    return clips, load_file(folder / empty_prompt_entry(text_length))


def epoch_batches(clips, global_batch: int, seed: int, epoch: int) -> list[list[int]]:
    """Batches of one bucket each, covering every clip once per epoch (the last batch of a bucket is
    filled from its start), in an order drawn from ``(seed, epoch)``."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    by_bucket: dict = {}
    for i, clip in enumerate(clips):
        by_bucket.setdefault(clip.bucket, []).append(i)
    batches = []
    for bucket in sorted(by_bucket):
        idx = by_bucket[bucket]
        perm = [idx[j] for j in torch.randperm(len(idx), generator=g).tolist()]
        n = math.ceil(len(perm) / global_batch)
        filled = (perm * math.ceil(n * global_batch / len(perm)))[: n * global_batch]
        batches += [filled[k * global_batch : (k + 1) * global_batch] for k in range(n)]
    return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]


def global_batch_at(clips, step: int, global_batch: int, seed: int) -> list[int]:
    per_epoch = len(epoch_batches(clips, global_batch, seed, 0))
    return epoch_batches(clips, global_batch, seed, step // per_epoch)[step % per_epoch]


# --------------------------------------------------------------------------------------------------
# 3. The loss: flow matching with the pipelines' noise-level shift, per-token timesteps, masks.
def motion_weights(packed: torch.Tensor, grid, weight: float) -> torch.Tensor:
    """Per-token loss weights ``1 + weight * change`` for ``(N, D)`` clean tokens on a ``(F, H, W)`` grid.

    ``change`` is how far a token's clean latent moves from the previous frame (the next frame for the
    first), over the clip's largest such move: 1 where content changes most, about 0 where the video
    holds still. The reference is at least the clip's root-mean-square token norm, so a still clip keeps
    weights near 1 rather than having its small noise scaled up. A motion is carried by a few tokens among
    many still ones (a small object on a plain background); weighting them teaches the motion without
    drowning it in the rest."""
    if weight == 0 or grid[0] < 2:
        return torch.ones(packed.shape[0])
    x = packed.float().view(grid[0], -1, packed.shape[-1])  # (F, H*W, D)
    diff = (x[1:] - x[:-1]).norm(dim=-1)  # (F-1, H*W)
    change = torch.cat([diff[:1], diff])  # (F, H*W): frame f against f-1, frame 0 against 1
    reference = torch.maximum(change.max(), x.pow(2).sum(-1).mean().sqrt()).clamp(min=1e-6)
    return (1 + weight * change / reference).flatten()  # (N,)


def sample_inputs(pipe, config, clips, empty, indices, positions, step):
    """Noised packed latents, targets, timesteps and the generated-token mask for one micro-batch."""
    x0, embeds, text_mask, x1, sigmas, masks, weights, captions = [], [], [], [], [], [], [], []
    p_t, p = pipe.patch_size
    t = config.train
    for index, position in zip(indices, positions):
        entry = clips[index].load()
        g = torch.Generator().manual_seed((config.seed * 1_000_003 + step) * 65_537 + position)
        latents = entry["latents"][None]  # (1, C, F, H, W)
        F, H, W = latents.shape[2:]
        grid = (F // p_t, H // p, W // p)  # the token grid
        r = float(torch.rand((), generator=g))
        mask = torch.ones(grid)  # 1 = generate, 0 = given (kept clean at timestep 0)
        if grid[0] > 1 and r < t.first_frame_p:
            mask[0] = 0  # image-to-video: the first latent frame is given
        elif grid[0] > 1 and r < t.first_frame_p + t.vdt_mask_p:
            mask = sample_training_mask(grid, g)[1]
        drop = float(torch.rand((), generator=g)) < t.caption_dropout
        source = empty if drop else entry
        packed = pipe.pack_latents(latents)[0]  # (N, D)
        x0.append(packed)
        x1.append(torch.randn(packed.shape, generator=g))
        u = compute_density_for_timestep_sampling(
            t.timestep_sampling, 1, t.logit_mean, t.logit_std, t.mode_scale, generator=g
        )[0].clamp(1e-4, 1 - 1e-4)
        sigmas.append(pipe.scheduler.training_sigmas(u, packed.shape[0]))
        masks.append(mask.flatten())
        weights.append(motion_weights(packed, grid, t.motion_weight))
        embeds.append(source["prompt_embeds"])
        text_mask.append(source["prompt_attention_mask"].bool())
        captions.append(None if drop else clips[index].caption)
    x0, x1, m = torch.stack(x0), torch.stack(x1), torch.stack(masks)  # (B, N, D), (B, N, D), (B, N)
    s = torch.stack(sigmas).view(-1, 1, 1)
    xt = torch.where(m[..., None] > 0, (1 - s) * x0 + s * x1, x0)
    return {
        "xt": xt, "target": x1 - x0, "timestep": s.view(-1, 1) * 1000 * m, "mask": m, "grid": (F, H, W),
        "weight": torch.stack(weights), "embeds": torch.stack(embeds), "text_mask": torch.stack(text_mask), "captions": captions,
    }  # fmt: skip


def flow_matching_loss(model, pipe, batch, device, frame_rate: float) -> torch.Tensor:
    F, H, W = batch["grid"]
    v = model(
        hidden_states=batch["xt"].to(device),
        encoder_hidden_states=batch["embeds"].to(device),
        timestep=batch["timestep"].to(device),
        encoder_attention_mask=batch["text_mask"].to(device),
        num_frames=F, height=H, width=W, return_dict=False, **pipe.transformer_extra_kwargs(frame_rate),
    )[0].float()  # fmt: skip
    per_token = ((v - batch["target"].to(device)) ** 2).mean(-1)  # (B, N)
    m = batch["mask"].to(device) * batch["weight"].to(device)  # generated tokens, weighted
    return ((per_token * m).sum(1) / m.sum(1).clamp(min=1e-8)).mean()  # mean over samples: DDP-exact


class BindingLoss:
    """``train.binding_weight``: ``vidgen.training.grounding.binding_loss`` on the text cross-attention
    of every DiT block, for captions of two objects in the Shapes grammar.

    A new word learned from few clips beside a second object takes on that object's motion ("moves
    diagonally" beside "moves down" comes out moving down): the concept object's tokens read the other
    phrase. The loss draws each object's latent tokens to its own phrase. Which object a token shows is
    read from the clip's pixels by color (``owners_by_color``), which words are whose from the caption;
    both are computed on a clip's first use. Other captions, and dropped ones, add nothing."""

    def __init__(self, pipe, transformer, clips, fps: float, text_length: int):
        p_t, p = pipe.patch_size
        if p_t != 1:
            raise ValueError(f"train.binding_weight needs a transformer with temporal patch size 1; got {p_t}")
        self.pipe, self.clips, self.fps, self.text_length = pipe, clips, fps, text_length
        self.stride = (pipe.vae_temporal_compression_ratio, pipe.vae_spatial_compression_ratio * p)
        self.probe = CrossAttentionProbe(transformer, list(range(len(transformer.transformer_blocks))))
        self.known: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def targets(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip ``index``'s word objects ``(T,)`` and token owners ``(N,)`` (-1: no object, or both)."""
        if index not in self.known:
            clip = self.clips[index]
            ids = self.pipe.tokenize([clip.caption], self.text_length).input_ids  # (1, T)
            words = caption_phrases(ids, self.pipe.tokenizer)[1][0]  # (T,)
            b, (t, s) = clip.bucket, self.stride
            owners = torch.full((((b.frames - 1) // t + 1) * (b.height // s) * (b.width // s),), -1, dtype=torch.int8)
            if (words == 1).any() and clip.source is not None:  # two phrases: find the objects
                try:
                    frames = load_clip(clip.source, [clip.bucket], self.fps)[0]  # (F, H, W, 3)
                    owners = owners_by_color(frames, clip.caption, t, s)
                except SkipMedia as e:  # the file changed or went away after caching: nothing to bind
                    warnings.warn(f"train.binding_weight: {e}; the clip trains without the binding loss", stacklevel=2)
            self.known[index] = words, owners
        return self.known[index]

    def __call__(self, inputs, indices: list[int], device) -> torch.Tensor:
        words, owners = (torch.stack(x) for x in zip(*(self.targets(i) for i in indices)))  # (B, T), (B, N)
        dropped = torch.tensor([c is None for c in inputs["captions"]])
        words, owners = binding_targets(words, owners, dropped)
        clean = 1 - inputs["timestep"] / 1000  # (B, N): the noisier a token, the less it can know its object
        return binding_loss(self.probe.maps(), words.to(device), owners.to(device), clean.to(device))


# --------------------------------------------------------------------------------------------------
# 4. Checkpoints: atomic, the last N kept, everything needed to continue exactly.
def config_digest(config: LoraTrainingConfig) -> dict:
    d = config.to_dict()
    for key in RESUMABLE_CHANGES:
        section, _, name = key.partition(".")
        if name:
            d[section].pop(name, None)
        else:
            d.pop(section, None)
    d.pop("output_dir", None)
    # Options at their defaults leave the digest as runs from before the options wrote it.
    if d["text_encoder_lora"]["rank"] == 0:
        d.pop("text_encoder_lora")
    if d["textual_inversion"]["num_vectors"] == 1:
        d["textual_inversion"].pop("num_vectors")
    if d["train"]["binding_weight"] == 0:
        d["train"].pop("binding_weight")
    for name in ("batch_size", "gradient_accumulation_steps"):  # compared as the global batch instead
        d["train"].pop(name, None)
    return d


def checkpoint_steps(out: Path) -> list[Path]:
    """Finished checkpoints, oldest first (temporary folders of interrupted writes are not among them)."""
    return sorted((out / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))


def save_checkpoint(
    out, step, transformer, optimizer, lr_scheduler, scaler, config, global_batch, words=None, text_encoder=None
) -> None:  # fmt: skip
    folder = out / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".step_{step:06d}.", dir=folder))
    save_file(get_peft_model_state_dict(transformer), tmp / "adapter.safetensors")
    if words is not None:
        save_file({"weight": words.weight.detach().cpu().contiguous()}, tmp / "learned_words.safetensors")
    if text_encoder is not None:
        save_file(get_peft_model_state_dict(text_encoder), tmp / "text_encoder_adapter.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(lr_scheduler.state_dict(), tmp / "lr_scheduler.pt")
    np_state = np.random.get_state()
    rng = {
        "torch": torch.get_rng_state().tolist(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": random.getstate(),
    }
    (tmp / "rng.json").write_text(json.dumps(rng))
    if scaler is not None:  # fp16 loss scaling
        torch.save(scaler.state_dict(), tmp / "scaler.pt")
    state = {"step": step, "global_batch": global_batch, "config": config_digest(config)}
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    final = folder / f"step_{step:06d}"
    if final.exists():  # the same step written again after a resume: identical content
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in checkpoint_steps(out)[: -config.checkpoints.keep_last]:
        shutil.rmtree(old)


def resume(
    out: Path, transformer, optimizer, lr_scheduler, config, global_batch: int, words=None, text_encoder=None
) -> tuple[int, Path | None]:
    """Restore the newest checkpoint; returns its step (0 for a fresh run) and folder."""
    checkpoints = checkpoint_steps(out)
    if config.checkpoints.resume == "none" and (checkpoints or (out / LORA_WEIGHT_NAME).exists()):
        raise ValueError(
            f"output_dir {out} already holds a run; choose another output_dir, or checkpoints.resume latest"
        )
    if not checkpoints:
        if (out / LORA_WEIGHT_NAME).exists():
            raise ValueError(
                f"output_dir {out} holds a finished LoRA but no checkpoints; choose another output_dir"
            )
        return 0, None
    last = checkpoints[-1]
    state = json.loads((last / "state.json").read_text())
    if state["step"] > config.train.max_steps:
        raise ValueError(
            f"train.max_steps {config.train.max_steps} is below the run's last checkpoint (step {state['step']})"
        )
    if state.get("global_batch") != global_batch:
        raise ValueError(
            f"the run in {out} used a global batch of {state.get('global_batch')} (batch_size x "
            f"gradient_accumulation_steps x processes); now it is {global_batch}"
        )
    ours, theirs = config_digest(config), state["config"]
    if ours != theirs:
        changed = sorted(_changed_keys(ours, theirs))
        raise ValueError(
            f"output_dir {out} holds checkpoints of a different configuration ({', '.join(changed)} differ); "
            "use another output_dir, or the same settings"
        )
    set_peft_model_state_dict(transformer, load_file(last / "adapter.safetensors"))
    if words is not None:
        with torch.no_grad():
            words.weight.copy_(load_file(last / "learned_words.safetensors")["weight"])
    if text_encoder is not None:
        set_peft_model_state_dict(text_encoder, load_file(last / "text_encoder_adapter.safetensors"))
    optimizer.load_state_dict(torch.load(last / "optimizer.pt", weights_only=True))
    lr_scheduler.load_state_dict(torch.load(last / "lr_scheduler.pt", weights_only=True))
    rng = json.loads((last / "rng.json").read_text())
    torch.set_rng_state(torch.tensor(rng["torch"], dtype=torch.uint8))
    kind, keys, *rest = rng["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    return state["step"], last


def _changed_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in set(a) | set(b):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            keys += _changed_keys(x, y, f"{prefix}{k}.")
        elif x != y:
            keys.append(prefix + k)
    return keys


def save_lora(out: Path, transformer, lora: LoraConfig, text_encoder=None, text_lora=None) -> Path:
    """diffusers' format (``pytorch_lora_weights.safetensors``, with rank and alpha as metadata); the
    text encoder's layers, if any, under ``text_encoder.`` in the same file."""
    from .. import VidGenPipeline

    tmp = Path(tempfile.mkdtemp(prefix=".lora.", dir=out))
    text = {}
    if text_encoder is not None:
        text = {"text_encoder_lora_layers": get_peft_model_state_dict(text_encoder),
                "text_encoder_lora_adapter_metadata": text_lora.to_dict()}  # fmt: skip
    VidGenPipeline.save_lora_weights(
        tmp, transformer_lora_layers=get_peft_model_state_dict(transformer),
        transformer_lora_adapter_metadata=lora.to_dict(), **text,
    )  # fmt: skip
    os.replace(tmp / LORA_WEIGHT_NAME, out / LORA_WEIGHT_NAME)
    shutil.rmtree(tmp)
    return out / LORA_WEIGHT_NAME


def save_learned_words(out: Path, words: LearnedWords) -> Path:
    """``learned_embeds.safetensors``: ``{word: (D,)}``, written to a temporary name, then renamed."""
    write_atomic(words.state_dict_for_diffusers(), out / LEARNED_EMBEDS_NAME)
    return out / LEARNED_EMBEDS_NAME


# --------------------------------------------------------------------------------------------------
# 5. Validation videos and logs.
@torch.no_grad()
def write_validation(pipe, config: LoraTrainingConfig, out: Path, step: int, frame_rate: float) -> None:
    from ..video_io import export_to_video

    v = config.validation
    folder = out / "validation" / f"step_{step:06d}"
    pipe.transformer.eval()
    for i, prompt in enumerate(v.prompts):
        video = pipe(
            prompt=prompt, num_frames=v.num_frames, height=v.height, width=v.width,
            num_inference_steps=v.num_inference_steps, guidance_scale=v.guidance_scale, frame_rate=frame_rate,
            generator=torch.Generator().manual_seed(v.seed + i), output_type="np",
        ).frames[0]  # fmt: skip
        slug = "-".join(prompt.lower().split())[:48].strip("-")
        export_to_video(video, folder / f"{i:02d}_{slug}.mp4", fps=frame_rate, overwrite=True)
    pipe.transformer.train()


class CSVLog:
    def __init__(self, path: Path, resumed_step: int):
        self.path = path
        if path.exists():  # rows past the checkpoint belong to the interrupted attempt
            rows = list(csv.DictReader(path.open()))
            kept = [r for r in rows if int(r["step"]) <= resumed_step]
            with path.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["step", "loss", "lr", "seconds"])
                writer.writeheader()
                writer.writerows(kept)

    def write(self, row: dict) -> None:
        new = not self.path.exists()
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)


# --------------------------------------------------------------------------------------------------
def warn_slow_cpu_bf16(
    mixed_precision: str, device: torch.device, cpuinfo: str | Path = "/proc/cpuinfo"
) -> bool:
    """Warn when bf16 is asked for on a CPU without bf16 instructions (AMX or AVX512-BF16): PyTorch then
    emulates it, and a training step is an order of magnitude slower than in fp32 (16 s against 0.8 s on
    a 2-core AVX2 CPU). Returns whether it warned; silent where the CPU's flags cannot be read."""
    if mixed_precision != "bf16" or device.type != "cpu":
        return False
    try:
        flags = Path(cpuinfo).read_text().split()
    except OSError:
        return False
    if "amx_bf16" in flags or "avx512_bf16" in flags:
        return False
    warnings.warn(
        "train.mixed_precision is bf16 but this CPU has no bf16 instructions (amx_bf16 or avx512_bf16): "
        "bf16 is emulated and training is much slower than with train.mixed_precision: no",
        stacklevel=2,
    )
    return True


# --------------------------------------------------------------------------------------------------
def main(argv=None) -> Path:
    config = parse_args(argv)
    out = Path(config.output_dir)
    report_to = config.logging.report_to
    if report_to == "auto":
        report_to = "tensorboard" if importlib.util.find_spec("tensorboard") else "none"
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(), mixed_precision=config.train.mixed_precision,
        log_with=None if report_to == "none" else report_to, project_dir=out / "logs",
        # Validation and the first cache build run while the other processes wait.
        kwargs_handlers=[InitProcessGroupKwargs(timeout=datetime.timedelta(hours=3))],
    )  # fmt: skip
    warn_slow_cpu_bf16(config.train.mixed_precision, accelerator.device)
    out.mkdir(parents=True, exist_ok=True)
    t = config.train
    global_batch = t.batch_size * t.gradient_accumulation_steps * accelerator.num_processes

    # 1. The pipeline, frozen; LoRA adapters on the transformer.
    pipe = load_pipeline(config, accelerator.device)
    transformer = pipe.transformer
    torch.manual_seed(config.seed)  # LoRA A matrices start from this seed
    lora = add_lora(transformer, config)
    frame_rate = config.data.fps  # the clips' rate (LTX-Video's positions depend on it)

    # 2. Latents and text embeddings, computed once into the cache; the clips in a fixed order.
    clips, empty = prepare_data(config, pipe, accelerator)
    # New words join the tokenizer after the cache (its text embeddings are then re-encoded per step).
    words = None
    if config.textual_inversion.tokens:
        words = LearnedWords(pipe, config.textual_inversion).to(accelerator.device)
    # A text-encoder LoRA, after the cache too (which holds the frozen encoder's embeddings).
    text_encoder, text_lora = None, None
    if config.text_encoder_lora.rank > 0:
        torch.manual_seed(config.seed + 1)  # its A matrices
        text_encoder = pipe.text_encoder
        text_lora = add_text_encoder_lora(text_encoder, config.text_encoder_lora)

    binding = None  # after the new words, which its caption parsing needs to know
    if t.binding_weight > 0:
        binding = BindingLoss(pipe, transformer, clips, config.data.fps, empty["prompt_embeds"].shape[0])

    # 3. Optimizer, LR schedule, and the state of an interrupted run.
    params = [p for p in transformer.parameters() if p.requires_grad]
    groups = [{"params": params}]
    if words is not None:
        lr = config.textual_inversion.learning_rate or t.learning_rate
        groups.append({"params": [words.weight], "lr": lr, "weight_decay": 0.0})
    if text_encoder is not None:
        lr = config.text_encoder_lora.learning_rate or t.learning_rate
        groups.append({"params": [p for p in text_encoder.parameters() if p.requires_grad], "lr": lr})
    trainable = [p for group in groups for p in group["params"]]
    text_path = trainable[len(params) :]  # trained outside the DDP wrapper
    optimizer = torch.optim.AdamW(groups, lr=t.learning_rate, weight_decay=t.weight_decay)
    lr_scheduler = get_scheduler(
        t.lr_scheduler, optimizer, num_warmup_steps=t.lr_warmup_steps, num_training_steps=t.max_steps
    )
    if accelerator.is_main_process:  # temporary files of writes a kill interrupted
        for stale in [*out.glob(".lora.*"), *(out / "checkpoints").glob(".step_*")]:
            shutil.rmtree(stale, ignore_errors=True)
        for stale in out.glob(f".{LEARNED_EMBEDS_NAME}.*.tmp"):
            stale.unlink()
    accelerator.wait_for_everyone()
    start, last = resume(out, transformer, optimizer, lr_scheduler, config, global_batch, words, text_encoder)
    model, optimizer = accelerator.prepare(transformer, optimizer)  # the LR schedule steps once per step
    if last is not None and accelerator.scaler is not None and (last / "scaler.pt").exists():
        accelerator.scaler.load_state_dict(torch.load(last / "scaler.pt", weights_only=True))
    if accelerator.is_main_process:
        (out / "resolved_config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        accelerator.init_trackers("vidgen-lora", config={"rank": config.lora.rank, "lr": t.learning_rate})
    log = CSVLog(out / "logs" / "train_log.csv", start) if accelerator.is_main_process else None
    if log:
        log.path.parent.mkdir(parents=True, exist_ok=True)

    # 4. The loop: each step is one global batch, split into micro-batches per process.
    bar = tqdm(
        range(start, t.max_steps), initial=start, total=t.max_steps, disable=not accelerator.is_main_process
    )
    tic = time.time()
    for step in bar:
        batch = global_batch_at(clips, step, global_batch, config.seed)
        loss_sum, bind_sum = 0.0, 0.0
        for micro in range(t.gradient_accumulation_steps):
            first = (micro * accelerator.num_processes + accelerator.process_index) * t.batch_size
            positions = list(range(first, first + t.batch_size))
            indices = [batch[j] for j in positions]
            inputs = sample_inputs(pipe, config, clips, empty, indices, positions, step)
            if text_path:  # captions encoded again through what trains in the text path
                inputs["embeds"], inputs["text_mask"] = encode_captions(
                    pipe, inputs["captions"], inputs["embeds"], inputs["text_mask"], words,
                    empty_too=text_encoder is not None,
                )  # fmt: skip
            torch.manual_seed(config.seed * 1_000_003 + step * 4096 + first)  # LoRA dropout
            syncs = micro == t.gradient_accumulation_steps - 1  # gradients are averaged across processes
            with contextlib.nullcontext() if syncs else accelerator.no_sync(model):
                loss = flow = flow_matching_loss(model, pipe, inputs, accelerator.device, frame_rate)
                if binding is not None:
                    bind = binding(inputs, indices, accelerator.device)
                    loss = flow + t.binding_weight * bind
                    bind_sum += bind.detach()
                accelerator.backward(loss / t.gradient_accumulation_steps)
            loss_sum += flow.detach()  # logged apart from the binding loss
        if text_path:
            average_gradients(accelerator, text_path)  # not in the DDP wrapper
        accelerator.clip_grad_norm_(trainable, t.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        done = step + 1
        if done % config.logging.every == 0 or done == t.max_steps:
            loss_value = accelerator.reduce(loss_sum / t.gradient_accumulation_steps, "mean").item()
            lr = lr_scheduler.get_last_lr()[0]
            row = {"loss": loss_value, "lr": lr}
            if binding is not None:
                row["binding"] = accelerator.reduce(bind_sum / t.gradient_accumulation_steps, "mean").item()
            bar.set_postfix({k: f"{v:.4f}" for k, v in row.items() if k != "lr"})
            if log:
                log.write({"step": done, **{k: f"{v:.6f}" if k != "lr" else f"{v:.3e}" for k, v in row.items()},
                           "seconds": f"{time.time() - tic:.1f}"})  # fmt: skip
            accelerator.log(row, step=done)
        if done % config.checkpoints.every == 0 or done == t.max_steps:
            if accelerator.is_main_process:
                save_checkpoint(out, done, accelerator.unwrap_model(model), optimizer, lr_scheduler,
                                accelerator.scaler, config, global_batch, words, text_encoder)  # fmt: skip
            accelerator.wait_for_everyone()
        v = config.validation
        if v.prompts and ((v.every and done % v.every == 0) or done == t.max_steps):
            if accelerator.is_main_process:
                if words is not None:
                    words.write_into(pipe.text_encoder)
                write_validation(pipe, config, out, done, frame_rate)
            accelerator.wait_for_everyone()

    # 5. The LoRA, in diffusers' format.
    path = out / LORA_WEIGHT_NAME
    if accelerator.is_main_process:
        path = save_lora(out, accelerator.unwrap_model(model), lora, text_encoder, text_lora)
        print(f"wrote {path}")
        if words is not None:
            print(f"wrote {save_learned_words(out, words)} ({', '.join(words.words)})")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return path


if __name__ == "__main__":
    main()
