"""Turbo2K on this machine: distillation across latent spaces, and two-stage hierarchical synthesis.

    python benchmarks/bench_turbo2k.py distill --model teacher=vidgen/default_model \\
        --model student=runs/turbo2k_plain/pipeline --model distilled=runs/turbo2k/pipeline [--num 100]
    python benchmarks/bench_turbo2k.py hierarchical --model FOLDER_WITH_ADAPTER [--sizes 128 256] [--num 12]
    ... [--results benchmarks/RESULTS.md]

``distill``: the evaluator's text-to-video accuracies (held-out captions, fixed seeds) and the seconds per
video of each pipeline folder (the first one is the reference for the speed-up), at the same steps;
``--guidance`` gives one classifier-free guidance scale for all, or one per ``--model`` (a model in another
latent space may need its own: 1 turns guidance off and halves the cost); without it, each folder samples
at its own ``default_guidance_scale`` (the Turbo2K recipe writes 1 into a student's folder).
``NAME=turbo2k:FOLDER`` measures the student a pipeline folder keeps in ``transformer_turbo2k/`` and
``vae_turbo2k/`` (the embedded default's: ``--model shipped=turbo2k:vidgen/default_model``).

``hierarchical``: at each size, direct generation (dense attention), FreeSwim (its upscale recipe, the
better of its two in earlier measurements) and the hierarchical pipeline, on object count, color, shape
and direction (videos area-averaged to the evaluator's 64x64), seconds per video and peak memory
(the process's resident memory above what it held before the call on a CPU; the allocator's peak on a GPU).
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from results_md import write_section  # benchmarks/results_md.py

from vidgen import (
    HIERARCHICAL_SUBFOLDER,
    HierarchicalAdapter,
    VidGenHierarchicalPipeline,
    VidGenPipeline,
    turbo2k_components,
)
from vidgen.data import shapes
from vidgen.eval import evaluate, evaluation_set, read_video, summarize
from vidgen.pipelines import generate_high_resolution
from vidgen.pipelines.common import DEFAULT_GUIDANCE_SCALE

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def named_folders(specs: list[str]) -> dict[str, str]:
    out = {}
    for spec in specs:
        name, _, folder = spec.partition("=")
        if not folder:
            raise SystemExit(f"--model must be NAME=FOLDER here; got {spec!r}")
        out[name] = folder
    return out


def distill(args) -> str:
    models = named_folders(args.model)
    scales = args.guidance or [None]  # None: each folder's own default
    if len(scales) not in (1, len(models)):
        raise SystemExit(f"--guidance takes one scale or one per --model ({len(models)}); got {len(scales)}")
    scales = scales * len(models) if len(scales) == 1 else scales
    lines = [
        f"text-to-video, {args.num} held-out captions x seed sets {args.seeds} (pooled), {args.steps} steps, "
        f"{DEVICE}, {torch.get_num_threads()} CPU threads\n",
        "| model | guidance | latent tokens | DiT params (M) | color | shape | direction | count | s / video | "
        "speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    reference = None
    for (name, folder), guidance in zip(models.items(), scales):
        kept = folder.removeprefix("turbo2k:")  # the student a folder keeps beside its own DiT
        parts = turbo2k_components(kept) if kept != folder else {}
        pipe = VidGenPipeline.from_pretrained(kept, **parts).to(DEVICE)
        guidance = pipe.resolve_guidance_scale(guidance)
        pipe.set_progress_bar_config(disable=True)
        call = dict(
            num_inference_steps=args.steps, guidance_scale=guidance, output_type="np", frame_rate=shapes.FPS
        )
        pipe("a red circle moves right", **call | {"num_inference_steps": 2})  # warm-up
        tic = time.perf_counter()
        for i in range(4):
            pipe("a red circle moves right", generator=torch.Generator().manual_seed(i), **call)
        seconds = (time.perf_counter() - tic) / 4
        reference = reference or seconds
        scores = evaluate(pipe, ["t2v"], n=args.num, steps=args.steps, seed=args.seeds, guidance_scale=guidance)
        s = scores["t2v"]
        tokens = int(np.prod(pipe.transformer.config.sample_size))
        params = sum(p.numel() for p in pipe.transformer.parameters()) / 1e6
        lines.append(
            f"| {name} | {guidance:g} | {tokens} | {params:.2f} | {s['color']:.1f} | {s['shape']:.1f} | "
            f"{s['direction']:.1f} | {s['count']:.1f} | {seconds:.2f} | {reference / seconds:.1f}x |"
        )
        print(lines[-1], flush=True)
    return "\n".join(lines)


class PeakMemory:
    """Peak memory of a block above its start, in MB: the CUDA allocator's peak, or on a CPU the
    process's resident set sampled every 2 ms."""

    def __enter__(self):
        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        self.base = self.peak = self._rss()
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        if self.cuda:
            self.mb = (torch.cuda.max_memory_allocated() - self.base) / 2**20
        else:
            self.running = False
            self.thread.join()
            self.mb = (max(self.peak, self._rss()) - self.base) / 2**20


def to_native(video: torch.Tensor) -> np.ndarray:
    """``(F, 3, H, W)`` in [0, 1] -> uint8 ``(F, 64, 64, 3)`` (area average), what the evaluator reads."""
    x = F.interpolate(video.float().cpu(), size=(shapes.NATIVE_SIZE, shapes.NATIVE_SIZE), mode="area")
    return (x.permute(0, 2, 3, 1).clamp(0, 1).numpy() * 255).round().astype(np.uint8)


def hierarchical(args) -> str:
    (folder,) = args.model
    pipe = VidGenPipeline.from_pretrained(folder).to(DEVICE)
    adapter = HierarchicalAdapter.from_pretrained(folder, subfolder=HIERARCHICAL_SUBFOLDER).to(DEVICE)
    hier = VidGenHierarchicalPipeline.from_pipe(pipe, hierarchical_adapter=adapter)
    for p in (pipe, hier):
        p.set_progress_bar_config(disable=True)
    clips = evaluation_set(args.num)
    common = dict(frame_rate=shapes.FPS, output_type="pt")
    methods = {
        f"direct, dense ({args.steps} steps)": lambda c, s, g: pipe(
            c, height=s, width=s, num_inference_steps=args.steps, generator=g, **common
        ).frames[0],
        f"FreeSwim, upscale recipe ({args.steps} steps)": lambda c, s, g: generate_high_resolution(
            pipe, c, s, s, num_inference_steps=args.steps, generator=g, frame_rate=shapes.FPS
        ),
    }
    for strength in args.strengths:
        methods[f"hierarchical, strength {strength} ({args.low_steps} + {args.high_steps} steps)"] = (
            lambda c, s, g, strength=strength: hier(
                c, height=s, width=s, num_inference_steps=args.low_steps, high_res_inference_steps=args.high_steps,
                strength=strength, generator=g, **common,
            ).frames[0]
        )  # fmt: skip
    methods = {name: m for name, m in methods.items() if name.split(",")[0].lower() in args.methods}
    lines = [
        f"default model (trained at 64x64), 17 frames, guidance {DEFAULT_GUIDANCE_SCALE:g}, {len(clips)} held-out captions, "
        f"{DEVICE}, {torch.get_num_threads()} CPU threads\n",
        "| size | method | count | color | shape | direction | s / video | peak memory (MB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    pipe("a red circle moves right", num_inference_steps=1, output_type="np")  # warm-up
    for size in args.sizes:
        for name, method in methods.items():
            reports, seconds, memory = [], [], []
            if name.startswith("FreeSwim"):
                pipe.enable_freeswim()
            for i, clip in enumerate(clips):
                tic = time.perf_counter()
                with PeakMemory() as peak:
                    video = method(clip.caption, size, torch.Generator().manual_seed(i))  # (F, 3, H, W)
                seconds.append(time.perf_counter() - tic)
                memory.append(peak.mb)
                reports.append(read_video(to_native(video), clip.caption))
            pipe.disable_freeswim()
            s = summarize(reports)
            lines.append(
                f"| {size} | {name} | {s['count']:.0f} | {s['color']:.0f} | {s['shape']:.0f} | "
                f"{s['direction']:.0f} | {np.mean(seconds):.1f} | {max(memory):.0f} |"
            )
            print(lines[-1], flush=True)
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", choices=("distill", "hierarchical"))
    p.add_argument(
        "--model", action="append", required=True, help="distill: NAME=FOLDER; hierarchical: FOLDER"
    )
    p.add_argument("--num", type=int, default=None, help="held-out captions (distill 100, hierarchical 12)")
    p.add_argument("--steps", type=int, default=30, help="denoising steps (distill; direct and FreeSwim)")
    p.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="distill: generator seed sets, pooled (0: seeds 0..)"
    )  # fmt: skip
    p.add_argument(
        "--guidance", type=float, nargs="+", default=None,
        help="distill: guidance scale, one for all or one per --model (default: each folder's own, else "
        f"{DEFAULT_GUIDANCE_SCALE:g})",
    )  # fmt: skip
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    p.add_argument("--low-steps", type=int, default=30, help="hierarchical: stage-one steps")
    p.add_argument("--high-steps", type=int, default=10, help="hierarchical: stage-two steps")
    p.add_argument("--strengths", type=float, nargs="+", default=[1.0], help="hierarchical: stage-two starts")
    p.add_argument(
        "--methods", nargs="+", choices=("direct", "freeswim", "hierarchical"),
        default=["direct", "freeswim", "hierarchical"], help="hierarchical: the methods to run",
    )  # fmt: skip
    p.add_argument("--results", default=None, help="Markdown file to write the table into")
    args = p.parse_args()
    if args.part == "distill":
        args.num = args.num or 100
        text = "### Turbo2K distillation across latent spaces\n\n" + distill(args)
    else:
        args.num = args.num or 12
        text = "### Turbo2K two-stage hierarchical synthesis\n\n" + hierarchical(args)
    print(text)
    if args.results:
        write_section(Path(args.results), f"bench_turbo2k_{args.part}", text)


if __name__ == "__main__":
    main()
