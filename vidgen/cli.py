"""The ``vidgen`` command line: ``vidgen t2v ...`` and ``vidgen i2v ...``.

A bad flag or input prints one line saying what is wrong and exits with status 2, no traceback.
Under ``accelerate launch`` the main process generates and writes; the others wait.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

DTYPES = ("float32", "bfloat16", "float16")
ATTENTION_BACKENDS = ("sdpa", "xformers", "flex")


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


def _add_generation_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="pipeline folder (diffusers layout) or hub id")
    p.add_argument("--prompt", required=True, help="text describing the video")
    p.add_argument("--negative-prompt", default=None, help="text to guide away from")
    p.add_argument("--height", type=_positive_int, default=None, help="pixels (default: the model's)")
    p.add_argument("--width", type=_positive_int, default=None, help="pixels (default: the model's)")
    p.add_argument("--frames", type=_positive_int, default=None, help="k * temporal_compression + 1 frames")
    p.add_argument("--fps", type=_positive_float, default=25.0, help="frame rate of the video (default 25)")
    p.add_argument("--steps", type=_positive_int, default=30, help="denoising steps (default 30)")
    p.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale (default 3)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--output", required=True, help="output .mp4, .gif, or folder of PNGs (no extension)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--attention", choices=ATTENTION_BACKENDS, default="sdpa", help="attention backend")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="weights dtype (default float32)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vidgen", description="Generate videos with vidgen pipelines.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    t2v = commands.add_parser("t2v", help="text-to-video")
    _add_generation_flags(t2v)
    i2v = commands.add_parser("i2v", help="image-to-video (the image is the first frame)")
    _add_generation_flags(i2v)
    i2v.add_argument("--image", required=True, help="first frame (png/jpg); sets the size unless given")
    return parser


def _check_output(path: str, overwrite: bool) -> None:
    suffix = Path(path).suffix.lower()
    if suffix not in (".mp4", ".gif", ""):
        raise CLIError(f"--output must end in .mp4 or .gif, or have no extension (PNG folder); got {path}")
    if Path(path).exists() and not overwrite:
        raise CLIError(f"--output {path} already exists; pass --overwrite to replace it")


def _load_pipeline(cls, model: str, dtype, device):
    import diffusers
    import torch
    import transformers

    # Keep stderr for what matters: the denoising progress bar and errors.
    for library in (diffusers, transformers):
        library.utils.logging.disable_progress_bar()
        library.utils.logging.set_verbosity_error()
    looks_like_hub_id = model.count("/") == 1 and not model.startswith((".", "/", "~"))
    if not os.path.isdir(model) and not looks_like_hub_id:
        raise CLIError(f"--model {model}: no such folder")
    try:
        pipe = cls.from_pretrained(model, dtype=getattr(torch, dtype))
    except Exception as e:  # any loading failure becomes one line naming the model
        raise CLIError(f"--model {model} could not be loaded: {str(e).splitlines()[0]}") from e
    pipe.set_progress_bar_config(leave=False)
    return pipe.to(device)


def _set_attention(pipe, backend: str) -> None:
    from .models import VidGenTransformer3DModel

    if isinstance(pipe.transformer, VidGenTransformer3DModel):
        pipe.transformer.set_attention_backend(backend)
    elif backend != "sdpa":  # diffusers models: its own registry, where SDPA is called "native"
        pipe.transformer.set_attention_backend(backend)


def run(args: argparse.Namespace) -> int:
    import torch
    from accelerate import PartialState

    from . import VidGenImageToVideoPipeline, VidGenPipeline, export_to_video, load_image

    _check_output(args.output, args.overwrite)
    if args.device is not None:
        try:
            torch.device(args.device)
        except RuntimeError as e:
            raise CLIError(f"--device {args.device}: {e}") from e
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise CLIError(f"--device {args.device}: CUDA is not available on this machine")
    state = PartialState(cpu=args.device == "cpu" or (args.device is None and not torch.cuda.is_available()))
    device = args.device or state.device
    extra = {}
    if args.command == "i2v":
        try:
            extra["image"] = load_image(args.image)
        except OSError as e:  # unreadable or not an image
            raise CLIError(f"--image {args.image}: {e}") from e
    if state.is_main_process:
        cls = VidGenImageToVideoPipeline if args.command == "i2v" else VidGenPipeline
        pipe = _load_pipeline(cls, args.model, args.dtype, device)
        _set_attention(pipe, args.attention)
        video = pipe(
            prompt=args.prompt,
            negative_prompt=args.negative_prompt,
            height=args.height,
            width=args.width,
            num_frames=args.frames,
            frame_rate=args.fps,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            generator=torch.Generator().manual_seed(args.seed),
            output_type="np",
            **extra,
        ).frames[0]
        path = export_to_video(video, args.output, fps=args.fps, overwrite=args.overwrite)
        print(f"wrote {path} ({video.shape[0]} frames, {video.shape[2]}x{video.shape[1]}, {args.fps:g} fps)")
    state.wait_for_everyone()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (CLIError, ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"vidgen {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
