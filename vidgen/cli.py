"""The ``vidgen`` command line: ``vidgen t2v|i2v|predict|interpolate|eval|train-lora ...``.

A bad flag or input prints one line saying what is wrong and exits with status 2, no traceback.
Under ``accelerate launch`` the main process generates and writes while the others wait, except for
``t2v --prompts FILE --output-dir DIR``, where the prompts are split across the processes.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from .pipelines.common import DEFAULT_GUIDANCE_SCALE, LEARNED_EMBEDS_NAME

DTYPES = ("float32", "bfloat16", "float16")
ATTENTION_BACKENDS = ("sdpa", "xformers", "flex")
ATTENTION_CHOICES = ATTENTION_BACKENDS + ("draft",)  # draft: DraftAttention block-sparse on the sdpa backend


class CLIError(Exception):
    """An input problem reported as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1; got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0; got {text!r}")
    return value


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"must be distinct integers >= 0, comma-separated; got {text!r}")
    return seeds


def _add_sampler_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--sampler", choices=("stochastic", "euler"), default=None,
        help="denoising steps: re-noise the predicted clean video with fresh noise at every level, or "
        "move along the velocity (default: the model's scheduler config; the embedded model: stochastic)",
    )  # fmt: skip


def _set_sampler(pipe, args) -> None:
    """``--sampler``: the scheduler's ``stochastic_sampling`` flag, set on a copy of its config."""
    if args.sampler is None:
        return
    stochastic = args.sampler == "stochastic"
    pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, stochastic_sampling=stochastic)


def _add_generation_flags(p: argparse.ArgumentParser, masked: bool = False) -> None:
    p.add_argument("--model", default=None, help="pipeline folder or hub id (default: the embedded model)")
    p.add_argument("--prompt", default=None if not masked else "", help="text describing the video")
    p.add_argument("--negative-prompt", default=None, help="text to guide away from")
    p.add_argument("--height", type=_positive_int, default=None, help="pixels (default: the model's)")
    p.add_argument("--width", type=_positive_int, default=None, help="pixels (default: the model's)")
    p.add_argument("--frames", type=_positive_int, default=None, help="k * temporal_compression + 1 frames")
    p.add_argument("--fps", type=_positive_float, default=None, help="frame rate (default: the model's)")
    p.add_argument(
        "--steps",
        type=_positive_int,
        default=None,
        help="denoising steps (default 30; 4 with --autoregressive)",
    )
    p.add_argument(
        "--guidance", type=float, default=None,
        help=f"classifier-free guidance scale (default: the model folder's, else {DEFAULT_GUIDANCE_SCALE:g}; 1, off, "
        "with --autoregressive)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    _add_sampler_flag(p)
    p.add_argument("--output", default=None, help="output .mp4, .gif, or folder of PNGs (no extension)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument(
        "--attention",
        choices=ATTENTION_CHOICES,
        default="sdpa",
        help="attention backend, or draft (DraftAttention)",
    )
    p.add_argument(
        "--sparsity",
        type=float,
        default=None,
        help="with --attention draft: tile pairs skipped (default 0.9)",
    )
    p.add_argument("--freeswim", action="store_true", help="FreeSwim inward windows for sizes above training")
    p.add_argument(
        "--freeswim-recipe", choices=("upscale", "noise"), default=None,
        help="t2v with --freeswim: generate at the model's size, upscale, denoise again (default); or from noise",
    )  # fmt: skip
    p.add_argument(
        "--strength",
        type=float,
        default=None,
        help="--freeswim t2v upscale recipe: re-noising strength (default 0.7)",
    )
    p.add_argument(
        "--lora", default=None, help="LoRA weights (a folder or .safetensors in diffusers' format)"
    )
    p.add_argument("--lora-scale", type=float, default=None, help="with --lora: its strength (default 1)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="weights dtype (default float32)")


def _add_turbo_flag(p) -> None:
    p.add_argument(
        "--turbo", action="store_true",
        help="the Turbo2K student: the model's distilled DiT in a 4x smaller latent space, about 4x faster "
        "(needs transformer_turbo2k/ and vae_turbo2k/ in the model folder; the embedded default ships them)",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vidgen", description="Generate videos with vidgen pipelines.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    t2v = commands.add_parser("t2v", help="text-to-video")
    _add_generation_flags(t2v)
    t2v.add_argument(
        "--prompts", default=None,
        help="a text file, one prompt per line: one video each, split across processes under accelerate launch",
    )  # fmt: skip
    t2v.add_argument("--output-dir", default=None, help="with --prompts: the folder the videos go to")
    t2v.add_argument(
        "--autoregressive", action="store_true",
        help="chunk-by-chunk rollout of the causal model with a KV cache: videos of any length (--frames)",
    )  # fmt: skip
    t2v.add_argument(
        "--kv-cache-frames", type=_positive_int, default=None,
        help="with --autoregressive: latent frames the rolling cache keeps (default: the training horizon)",
    )  # fmt: skip
    t2v.add_argument(
        "--opening-frames", type=_positive_int, default=None, metavar="FRAMES",
        help="with --autoregressive: the folder's bidirectional model makes the first FRAMES frames (4k + 1, "
        "at most its length; 30 steps, its guidance) and the causal model extends them: fewer objects lost "
        "over long videos, at the cost of the first frames coming later",
    )  # fmt: skip
    t2v.add_argument(
        "--hierarchical", action="store_true",
        help="two stages: the model's size first, then --height x --width guided by its DiT features "
        "(needs a hierarchical_adapter/ in the model folder; the embedded default ships one)",
    )  # fmt: skip
    t2v.add_argument(
        "--high-res-steps", type=_positive_int, default=None,
        help="with --hierarchical: stage-two denoising steps (default 10)",
    )  # fmt: skip
    _add_turbo_flag(t2v)
    i2v = commands.add_parser("i2v", help="image-to-video (the image is the first frame)")
    _add_generation_flags(i2v)
    i2v.add_argument("--image", required=True, help="first frame (png/jpg); sets the size unless given")
    predict = commands.add_parser("predict", help="continue a video from its first frames")
    _add_generation_flags(predict, masked=True)
    predict.add_argument("--video", required=True, help="input video; its length and size are kept")
    predict.add_argument("--given", type=_positive_int, default=5, help="given first frames (default 5)")
    interpolate = commands.add_parser("interpolate", help="fill in the frames between every n-th given frame")
    _add_generation_flags(interpolate, masked=True)
    interpolate.add_argument("--video", required=True, help="input video; its length and size are kept")
    interpolate.add_argument(
        "--every", type=_positive_int, default=4, help="every n-th frame is given, from frame 0 (default 4)"
    )
    evaluate = commands.add_parser("eval", help="generate for the held-out Shapes captions and print scores")
    evaluate.add_argument("--model", default=None, help="pipeline folder (default: the embedded model)")
    evaluate.add_argument("--num", type=_positive_int, default=100, help="held-out clips (default 100)")
    evaluate.add_argument("--steps", type=_positive_int, default=None, help="denoising steps (default 30)")
    evaluate.add_argument(
        "--guidance",
        type=_positive_float,
        default=None,
        help=f"classifier-free guidance scale (default: the model folder's, else {DEFAULT_GUIDANCE_SCALE:g})",
    )
    evaluate.add_argument("--tasks", default="t2v,i2v,predict,interpolate", help="comma-separated tasks")
    evaluate.add_argument(
        "--by-objects", action="store_true",
        help="also score one-object and two-object captions apart (rows 'TASK, 1 object' and 'TASK, 2 objects')",
    )  # fmt: skip
    evaluate.add_argument(
        "--misses", action="store_true",
        help="also print each object the evaluator read wrong (missing, shape, motion; binding and jumps noted)",
    )  # fmt: skip
    evaluate.add_argument(
        "--seed", type=_seed_list, default=[0],
        help="first generator seed (clip i uses seed + i); several, comma-separated, pool their videos "
        "and add a row per seed (default 0)",
    )  # fmt: skip
    _add_sampler_flag(evaluate)
    _add_turbo_flag(evaluate)
    evaluate.add_argument("--device", default=None)
    evaluate.add_argument("--dtype", choices=DTYPES, default="float32")
    evaluate.add_argument("--lora", default=None, help="evaluate with these LoRA weights")
    evaluate.add_argument(
        "--lora-scale", type=float, default=None, help="with --lora: its strength (default 1)"
    )
    commands.add_parser(
        "train-lora", add_help=False,
        help="LoRA fine-tuning: vidgen train-lora --config config.yaml [--section.key value ...]",
    )  # fmt: skip
    return parser


def _check_output(path: str | None, overwrite: bool) -> None:
    if path is None:
        raise CLIError("--output is required")
    suffix = Path(path).suffix.lower()
    if suffix not in (".mp4", ".gif", ""):
        raise CLIError(f"--output must end in .mp4 or .gif, or have no extension (PNG folder); got {path}")
    if Path(path).exists() and not overwrite:
        raise CLIError(f"--output {path} already exists; pass --overwrite to replace it")


def _load_pipeline(cls, model: str | None, dtype, device, turbo: bool = False):
    import diffusers
    import torch
    import transformers

    # Keep stderr for what matters: the denoising progress bar and errors.
    for library in (diffusers, transformers):
        library.utils.logging.disable_progress_bar()
        library.utils.logging.set_verbosity_error()
    if model is None:
        from . import DEFAULT_MODEL

        if not os.path.isfile(os.path.join(DEFAULT_MODEL, "model_index.json")):
            raise CLIError("no --model given and this install has no embedded default model")
        model = DEFAULT_MODEL
    looks_like_hub_id = model.count("/") == 1 and not model.startswith((".", "/", "~"))
    if not os.path.isdir(model) and not looks_like_hub_id:
        raise CLIError(f"--model {model}: no such folder")
    from .models import HierarchicalAdapter
    from .pipelines import (
        CAUSAL_SUBFOLDER,
        HIERARCHICAL_SUBFOLDER,
        TURBO2K_SUBFOLDER,
        TURBO2K_VAE_SUBFOLDER,
        VidGenAutoregressivePipeline,
        VidGenHierarchicalPipeline,
        causal_components,
        turbo2k_components,
    )

    if cls is VidGenHierarchicalPipeline and not os.path.isdir(os.path.join(model, HIERARCHICAL_SUBFOLDER)):
        raise CLIError(
            f"--model {model} has no {HIERARCHICAL_SUBFOLDER}/ for --hierarchical; train one with "
            "scripts/train_hierarchical.py"
        )
    if turbo and not all(
        os.path.isdir(os.path.join(model, s)) for s in (TURBO2K_SUBFOLDER, TURBO2K_VAE_SUBFOLDER)
    ):
        raise CLIError(
            f"--model {model} has no {TURBO2K_SUBFOLDER}/ and {TURBO2K_VAE_SUBFOLDER}/ for --turbo; distill a student "
            "with scripts/distill_turbo2k.py and add it with vidgen.save_turbo2k_student"
        )
    try:
        components = turbo2k_components(model) if turbo else {}
        if cls is VidGenHierarchicalPipeline:
            adapter = HierarchicalAdapter.from_pretrained(model, subfolder=HIERARCHICAL_SUBFOLDER)
            components["hierarchical_adapter"] = adapter
        if cls is VidGenAutoregressivePipeline and os.path.isdir(model):
            # a pipeline folder may carry a causal student (with the text encoder it was distilled with)
            # and a fast streaming decoder next to its own parts
            components |= causal_components(model)
        pipe = cls.from_pretrained(model, dtype=getattr(torch, dtype), **components)
        pipe.to(getattr(torch, dtype))
    except Exception as e:  # any loading failure becomes one line naming the model
        raise CLIError(f"--model {model} could not be loaded: {str(e).splitlines()[0]}") from e
    if (
        cls is VidGenAutoregressivePipeline
        and getattr(pipe.transformer.config, "causal_chunk_size", None) is None
    ):
        raise CLIError(
            f"--model {model} has no causal transformer for --autoregressive (a {CAUSAL_SUBFOLDER}/ folder, or a "
            "causal transformer/); make one with scripts/train_causal_init.py"
        )
    pipe.set_progress_bar_config(leave=False)
    return pipe.to(device)


def _sampling_defaults(args) -> None:
    """Steps and guidance: 30 and the folder's guidance (``None``: the pipeline reads model_index.json, else
    ``DEFAULT_GUIDANCE_SCALE``) for the bidirectional pipelines; 4 and 1 (off) for the distilled causal
    model of ``--autoregressive``."""
    autoregressive = getattr(args, "autoregressive", False)
    if args.steps is None:
        args.steps = 4 if autoregressive else 30
    if args.guidance is None and autoregressive:
        args.guidance = 1.0
    for flag in ("kv_cache_frames", "opening_frames"):
        if not autoregressive and getattr(args, flag, None) is not None:
            raise CLIError(f"--{flag.replace('_', '-')} applies with --autoregressive only")
    if autoregressive and (args.freeswim or args.attention == "draft"):
        raise CLIError("--autoregressive does not combine with --freeswim or --attention draft")
    hierarchical = getattr(args, "hierarchical", False)
    if getattr(args, "high_res_steps", None) is not None and not hierarchical:
        raise CLIError("--high-res-steps applies with --hierarchical only")
    if hierarchical and (autoregressive or args.freeswim or args.attention == "draft"):
        raise CLIError(
            "--hierarchical does not combine with --autoregressive, --freeswim or --attention draft"
        )
    turbo = getattr(args, "turbo", False)
    if turbo and (autoregressive or hierarchical or args.freeswim or args.attention == "draft" or args.lora):
        raise CLIError(
            "--turbo does not combine with --autoregressive, --hierarchical, --freeswim, --attention draft "
            "or --lora (the student is a DiT of its own, in its own latent space)"
        )


def _set_attention(pipe, backend: str) -> None:
    from .models import VidGenTransformer3DModel

    if isinstance(pipe.transformer, VidGenTransformer3DModel):
        pipe.transformer.set_attention_backend(backend)
    elif backend != "sdpa":  # diffusers models: its own registry, where SDPA is called "native"
        pipe.transformer.set_attention_backend(backend)


def _set_attention_kind(pipe, args) -> None:
    if args.attention == "draft" and args.freeswim:
        raise CLIError("--attention draft and --freeswim cannot be combined; choose one")
    if args.sparsity is not None and args.attention != "draft":
        raise CLIError("--sparsity applies to --attention draft only")
    if args.freeswim_recipe is not None and not args.freeswim:
        raise CLIError("--freeswim-recipe applies to --freeswim only")
    if args.strength is not None and not (args.freeswim or getattr(args, "hierarchical", False)):
        raise CLIError("--strength applies to --freeswim or --hierarchical only")
    if args.strength is not None and not 0 < args.strength <= 1:
        raise CLIError(f"--strength must be in (0, 1]; got {args.strength}")
    if args.attention == "draft":
        sparsity = 0.9 if args.sparsity is None else args.sparsity
        if not 0 <= sparsity < 1:
            raise CLIError(f"--sparsity must be in [0, 1); got {sparsity}")
        pipe.enable_draft_attention(sparsity=sparsity)
    if args.freeswim:
        _, h, w = pipe.default_video_size
        if (args.height or h) <= h and (args.width or w) <= w:
            raise CLIError(
                f"--freeswim is for sizes above the model's {h}x{w}: pass a larger --height or --width"
            )
        if args.strength is not None and args.command != "t2v":
            raise CLIError("--strength applies to t2v (the upscale recipe) only")
        pipe.enable_freeswim()


def _load_lora(pipe, args) -> None:
    if args.lora is None:
        if args.lora_scale is not None:
            raise CLIError("--lora-scale applies with --lora only")
        return
    if not os.path.exists(args.lora):
        raise CLIError(f"--lora {args.lora}: no such file or folder")
    try:
        pipe.load_lora_weights(args.lora, adapter_name="lora")
    except Exception as e:  # wrong format or a LoRA for another model: one line naming the file
        raise CLIError(f"--lora {args.lora} could not be loaded: {str(e).splitlines()[0]}") from e
    pipe.set_adapters(["lora"], [1.0 if args.lora_scale is None else args.lora_scale])
    words = os.path.join(args.lora, LEARNED_EMBEDS_NAME)
    if os.path.isdir(args.lora) and os.path.isfile(words):  # new words train-lora learned with it
        try:
            pipe.load_textual_inversion(words)
        except Exception as e:
            problem = str(e).splitlines()[0]
            raise CLIError(f"--lora {args.lora}: {LEARNED_EMBEDS_NAME} could not be loaded: {problem}") from e


def _read_prompts(args) -> list[str]:
    """``--prompts`` file -> prompts (blank lines and ``#`` comments skipped); checks the flags."""
    if args.output is not None or args.output_dir is None:
        raise CLIError(
            "--prompts writes into --output-dir (one video per prompt); pass --output-dir, not --output"
        )
    if args.prompt is not None:
        raise CLIError("pass either --prompt or --prompts, not both")
    if args.freeswim:
        raise CLIError("--freeswim is not available with --prompts")
    try:
        lines = Path(args.prompts).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise CLIError(f"--prompts {args.prompts}: {e.strerror or e}") from e
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise CLIError(f"--prompts {args.prompts} holds no prompts")
    return prompts


def _t2v_pipeline(args) -> tuple[type, dict]:
    """The text-to-video pipeline class the flags ask for, and its extra call arguments."""
    from . import VidGenAutoregressivePipeline, VidGenHierarchicalPipeline, VidGenPipeline

    for flag in ("autoregressive", "hierarchical"):
        if args.sampler is not None and getattr(args, flag):
            raise CLIError(f"--sampler applies to the scheduler's steps; --{flag} samples with its own")
    if args.autoregressive:
        return VidGenAutoregressivePipeline, {"kv_cache_frames": args.kv_cache_frames}
    if args.hierarchical:
        strength = 1.0 if args.strength is None else args.strength
        steps = 10 if args.high_res_steps is None else args.high_res_steps
        return VidGenHierarchicalPipeline, {"high_res_inference_steps": steps, "strength": strength}
    return VidGenPipeline, {}


def _opening(args, device):
    """``--opening-frames N``: a function ``(prompt, seed) -> the first N frames`` made by the folder's
    bidirectional model (its default steps and guidance), for the causal model to extend; else None."""
    import torch

    from . import VidGenPipeline

    n = getattr(args, "opening_frames", None)
    if n is None:
        return None
    pipe = _load_pipeline(VidGenPipeline, args.model, args.dtype, device)
    length = pipe.default_video_size[0]
    t = pipe.vae_temporal_compression_ratio
    if (n - 1) % t or n > length:
        raise CLIError(
            f"--opening-frames must be k * {t} + 1 frames, at most the bidirectional model's {length}; got {n}"
        )
    _set_attention(pipe, args.attention if args.attention != "draft" else "sdpa")
    _load_lora(pipe, args)

    def opening(prompt: str, seed: int) -> list:
        video = pipe(
            prompt=prompt, negative_prompt=args.negative_prompt, height=args.height, width=args.width,
            frame_rate=args.fps or pipe.default_frame_rate, generator=torch.Generator().manual_seed(seed),
            output_type="np",
        ).frames[0]  # (length, H, W, 3)  # fmt: skip
        return list(video[:n])

    return opening


def _hierarchical_size(args, pipe) -> None:
    """--hierarchical generates above the model's size: twice it on each side unless given."""
    _, h, w = pipe.default_video_size
    args.height, args.width = args.height or 2 * h, args.width or 2 * w
    if args.height <= h and args.width <= w:
        raise CLIError(
            f"--hierarchical is for sizes above the model's {h}x{w}: pass a larger --height or --width"
        )


def prompt_video_name(index: int, prompt: str) -> str:
    """``0007_a-red-circle-moves-right.mp4``: fixed by the prompt's line, whatever the process count."""
    slug = "".join(c if c.isalnum() else "-" for c in prompt.lower())
    slug = "-".join(part for part in slug.split("-") if part)[:60]
    return f"{index:04d}_{slug or 'video'}.mp4"


def run_prompts(args, state) -> int:
    """One video per prompt, each written by exactly one process; prompt ``i`` uses seed ``seed + i``."""
    import torch

    from . import export_to_video

    prompts = _read_prompts(args)
    out = Path(args.output_dir)
    names = [prompt_video_name(i, prompt) for i, prompt in enumerate(prompts)]
    existing = [n for n in names if (out / n).exists()]
    if existing and not args.overwrite:
        raise CLIError(
            f"--output-dir {out} already holds {len(existing)} of the videos (e.g. {existing[0]}); "
            "pass --overwrite to replace them"
        )
    state.wait_for_everyone()  # every process has checked before any writes
    device = args.device or state.device
    cls, extra = _t2v_pipeline(args)
    pipe = _load_pipeline(cls, args.model, args.dtype, device, turbo=args.turbo)
    if args.hierarchical:
        _hierarchical_size(args, pipe)
    _set_attention(pipe, "sdpa" if args.attention == "draft" else args.attention)
    _set_attention_kind(pipe, args)
    _load_lora(pipe, args)
    _set_sampler(pipe, args)
    opening = _opening(args, device)
    fps = args.fps or pipe.default_frame_rate
    out.mkdir(parents=True, exist_ok=True)
    with state.split_between_processes(list(range(len(prompts)))) as mine:
        for i in mine:
            if opening is not None:
                extra["video"] = opening(prompts[i], args.seed + i)
            video = pipe(
                prompt=prompts[i], negative_prompt=args.negative_prompt, height=args.height, width=args.width,
                num_frames=args.frames, frame_rate=fps, num_inference_steps=args.steps,
                guidance_scale=args.guidance, generator=torch.Generator().manual_seed(args.seed + i),
                output_type="np", **extra,
            ).frames[0]  # fmt: skip
            path = export_to_video(video, out / names[i], fps=fps, overwrite=args.overwrite)
            print(
                f"[process {state.process_index}] wrote {path}", flush=True
            )  # a line per video, as it lands
    state.wait_for_everyone()
    return 0


def _check_device(args) -> None:
    import torch

    if args.device is not None:
        try:
            torch.device(args.device)
        except RuntimeError as e:
            raise CLIError(f"--device {args.device}: {e}") from e
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise CLIError(f"--device {args.device}: CUDA is not available on this machine")


def run_eval(args: argparse.Namespace) -> int:
    import torch

    from . import VidGenPipeline
    from .eval import evaluate, format_table, misses

    _check_device(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.turbo and args.lora is not None:
        raise CLIError("--lora does not combine with --turbo: a LoRA is trained for the model's own DiT")
    pipe = _load_pipeline(VidGenPipeline, args.model, args.dtype, device, turbo=args.turbo)
    pipe.set_progress_bar_config(disable=True)
    _load_lora(pipe, args)
    _set_sampler(pipe, args)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = set(tasks) - {"t2v", "i2v", "predict", "interpolate"}
    if unknown:
        raise CLIError(f"--tasks must be among t2v, i2v, predict, interpolate; got {sorted(unknown)}")
    found_wrong = []

    def note_misses(task, index, clip, report, seed):
        at = f"#{index}" if len(args.seed) == 1 else f"#{index} (seed {seed})"
        found_wrong.extend(f"{task} {at} {clip.caption!r}: {line}" for line in misses(report))

    results = evaluate(
        pipe, tasks, n=args.num, steps=args.steps, seed=args.seed, guidance_scale=args.guidance,
        by_objects=args.by_objects, on_video=note_misses if args.misses else None,
    )  # fmt: skip
    print(format_table(results))
    if args.misses:
        print(f"\n{len(found_wrong)} objects read wrong:", *found_wrong, sep="\n")
    return 0


def run(args: argparse.Namespace) -> int:
    import torch
    from accelerate import PartialState

    from . import (
        VidGenImageToVideoPipeline,
        VidGenMaskedVideoPipeline,
        export_to_video,
        load_image,
        load_video,
    )
    from .pipelines import generate_high_resolution

    if args.command == "eval":
        return run_eval(args)
    _check_device(args)
    _sampling_defaults(args)
    state = PartialState(cpu=args.device == "cpu" or (args.device is None and not torch.cuda.is_available()))
    if args.command == "t2v" and args.prompts is not None:
        return run_prompts(args, state)
    if args.command == "t2v" and args.output_dir is not None:
        raise CLIError("--output-dir goes with --prompts; for one video pass --output")
    if args.command in ("t2v", "i2v") and args.prompt is None:
        raise CLIError("--prompt is required")
    _check_output(args.output, args.overwrite)
    device = args.device or state.device
    extra = {}
    if args.command == "i2v":
        try:
            extra["image"] = load_image(args.image)
        except OSError as e:  # unreadable or not an image
            raise CLIError(f"--image {args.image}: {e}") from e
    if args.command == "predict":
        extra.update(video=_read_video(load_video, args.video), task="predict", given_frames=args.given)
    if args.command == "interpolate":
        extra.update(video=_read_video(load_video, args.video), task="interpolate", every=args.every)
    if args.command == "t2v":
        cls, t2v_extra = _t2v_pipeline(args)
        extra.update(t2v_extra)
    else:
        cls = VidGenImageToVideoPipeline if args.command == "i2v" else VidGenMaskedVideoPipeline
    if state.is_main_process:
        pipe = _load_pipeline(cls, args.model, args.dtype, device, turbo=getattr(args, "turbo", False))
        if args.command == "t2v" and args.hierarchical:
            _hierarchical_size(args, pipe)
        _set_attention(pipe, "sdpa" if args.attention == "draft" else args.attention)
        _set_attention_kind(pipe, args)
        _load_lora(pipe, args)
        _set_sampler(pipe, args)
        fps = args.fps or pipe.default_frame_rate
        common = dict(
            negative_prompt=args.negative_prompt,
            num_frames=args.frames,
            frame_rate=fps,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            generator=torch.Generator().manual_seed(args.seed),
        )
        if args.command == "t2v" and args.freeswim and args.freeswim_recipe != "noise":
            _, h, w = pipe.default_video_size
            strength = 0.7 if args.strength is None else args.strength
            video = generate_high_resolution(
                pipe, args.prompt, args.height or h, args.width or w, strength=strength, **common
            )
            video = video.permute(0, 2, 3, 1).cpu().float().numpy()  # (F, H, W, 3)
        else:
            opening = _opening(args, device) if args.command == "t2v" else None
            if opening is not None:
                extra["video"] = opening(args.prompt, args.seed)
            video = pipe(
                prompt=args.prompt, height=args.height, width=args.width, output_type="np", **common, **extra
            ).frames[0]
        path = export_to_video(video, args.output, fps=fps, overwrite=args.overwrite)
        print(f"wrote {path} ({video.shape[0]} frames, {video.shape[2]}x{video.shape[1]}, {fps:g} fps)")
    state.wait_for_everyone()
    return 0


def _read_video(load_video, path: str):
    try:
        return load_video(path)
    except (OSError, RuntimeError) as e:  # unreadable or not a video
        raise CLIError(f"--video {path}: {str(e).splitlines()[0]}") from e


def run_train_lora(argv: list[str]) -> int:
    from .training.train_lora import main as train_lora

    try:
        train_lora(argv)
    except (ValueError, FileNotFoundError) as e:
        print(f"vidgen train-lora: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train-lora"]:  # its flags are the config's keys: parsed by the trainer
        return run_train_lora(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (CLIError, ValueError, FileNotFoundError, FileExistsError) as e:
        message = str(e).splitlines()[0] if str(e) else repr(e)
        print(f"vidgen {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
