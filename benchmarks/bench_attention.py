"""DraftAttention and FreeSwim on this machine: kernel speed, end-to-end speed, and what the evaluator reads.

    python benchmarks/bench_attention.py kernels                     # dense SDPA vs the sparse kernels
    python benchmarks/bench_attention.py draft   [--prompts 3]       # default model at 256x256: dense vs draft
    python benchmarks/bench_attention.py freeswim [--prompts 12]     # 128x128 and 256x256: direct vs FreeSwim

Every part prints a markdown table. Timings are wall-clock seconds on whatever runs this (CPU
unless CUDA is available), after one warm-up call.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from vidgen import DEFAULT_MODEL, VidGenPipeline
from vidgen.attention import DraftAttentionConfig, draft_pattern, window_pattern
from vidgen.data import shapes
from vidgen.eval import evaluation_set, psnr, read_video, summarize
from vidgen.models.block_sparse import sparse_attention, tile_tokens
from vidgen.pipelines import generate_high_resolution


def timed(fn, repeats=3):
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    return (time.perf_counter() - start) / repeats, out


# --------------------------------------------------------------------------------------------------
def kernels(args):
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; B=2 (guidance), 3 heads x 64\n")
    print("| pattern | grid (F, H, W) | tokens | kept pairs | dense SDPA ms | gather ms | speed-up | max abs diff |")
    print("|---|---|---|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    for grid in [(5, 32, 32), (9, 32, 32), (5, 64, 64)]:
        n = grid[0] * grid[1] * grid[2]
        q, k, v = (torch.randn(2, n, 3, 64, generator=g) for _ in range(3))
        t_dense, ref = timed(
            lambda q=q, k=k, v=v: F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            ).transpose(1, 2),
            repeats=2,
        )
        cases = [(f"draft {s}", DraftAttentionConfig(sparsity=s)) for s in (0.5, 0.75, 0.9, 0.95)]
        cases.append(("window 8x8", None))
        for name, cfg in cases:
            if cfg is None:
                pattern = window_pattern(grid, (8, 8), True, (4, 8))
            else:
                pattern = draft_pattern(q, k, tile_tokens(grid, cfg.tile), cfg)
            t_sparse, out = timed(lambda p=pattern, q=q, k=k, v=v: sparse_attention(q, k, v, p, "gather"), repeats=2)
            kept = float(pattern.kept_fraction().mean())
            diff = "" if cfg is None else f"{(out - sparse_attention(q, k, v, pattern, 'reference')).abs().max():.1e}"
            print(
                f"| {name} | {grid} | {n} | {kept:.3f} | {t_dense * 1e3:.0f} | {t_sparse * 1e3:.0f} | "
                f"{t_dense / t_sparse:.2f}x | {diff} |"
            )


# --------------------------------------------------------------------------------------------------
def to_native(video: np.ndarray) -> np.ndarray:
    """``(F, H, W, 3)`` in [0, 1] -> uint8 at the evaluator's native 64x64 (area average)."""
    x = torch.from_numpy(video).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(shapes.NATIVE_SIZE, shapes.NATIVE_SIZE), mode="area")
    return (x.permute(0, 2, 3, 1).clamp(0, 1).numpy() * 255).round().astype(np.uint8)


def draft(args):
    pipe = VidGenPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    clips = evaluation_set(args.prompts)
    size = args.size
    call = dict(height=size, width=size, num_inference_steps=args.steps, output_type="np", frame_rate=shapes.FPS)

    def run(configure):
        configure()
        videos, seconds = [], []
        for i, clip in enumerate(clips):
            start = time.perf_counter()
            videos.append(pipe(clip.caption, generator=torch.Generator().manual_seed(i), **call).frames[0])
            seconds.append(time.perf_counter() - start)
        return videos, float(np.mean(seconds))

    pipe(clips[0].caption, **call | {"num_inference_steps": 1})  # warm-up
    dense_videos, dense_s = run(lambda: pipe.disable_draft_attention())
    print(f"default model, {size}x{size}x17, {args.steps} steps, guidance 3, {len(clips)} prompts\n")
    print("| attention | s / video | speed-up | PSNR vs dense (dB) | count | color | shape |")
    print("|---|---|---|---|---|---|---|")
    rows = [("dense", None)] + [(f"draft {s}", s) for s in args.sparsities]
    for name, sparsity in rows:
        if sparsity is None:
            videos, seconds = dense_videos, dense_s
        else:
            videos, seconds = run(lambda s=sparsity: pipe.enable_draft_attention(sparsity=s))
        pipe.disable_draft_attention()
        quality = np.mean([psnr(to_native(a), to_native(b)) for a, b in zip(videos, dense_videos, strict=True)])
        scores = summarize([read_video(to_native(v), c.caption) for v, c in zip(videos, clips, strict=True)])
        print(
            f"| {name} | {seconds:.1f} | {dense_s / seconds:.2f}x | {'-' if sparsity is None else f'{quality:.1f}'} | "
            f"{scores['count']:.0f} | {scores['color']:.0f} | {scores['shape']:.0f} |"
        )


# --------------------------------------------------------------------------------------------------
def freeswim(args):
    pipe = VidGenPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    clips = evaluation_set(args.prompts)
    common = dict(num_inference_steps=args.steps, frame_rate=shapes.FPS)
    print(f"default model (trained at 64x64), 17 frames, {args.steps} steps, guidance 3, {len(clips)} prompts\n")
    print("| size | method | s / video | count | color | shape | direction |")
    print("|---|---|---|---|---|---|---|")
    methods = {
        "direct (dense)": lambda c, s, g: pipe(c, height=s, width=s, generator=g, output_type="pt", **common).frames[0],
        "upscale + SDEdit, dense": lambda c, s, g: generate_high_resolution(pipe, c, s, s, generator=g, **common),
        "FreeSwim, from noise": lambda c, s, g: generate_high_resolution(
            pipe, c, s, s, recipe="noise", generator=g, **common
        ),
        "FreeSwim, upscale recipe": lambda c, s, g: generate_high_resolution(pipe, c, s, s, generator=g, **common),
    }
    for size in args.sizes:
        for name, method in methods.items():
            if name.startswith("FreeSwim"):
                pipe.enable_freeswim()
            reports, seconds = [], []
            for i, clip in enumerate(clips):
                start = time.perf_counter()
                video = method(clip.caption, size, torch.Generator().manual_seed(i))  # (F, 3, H, W)
                seconds.append(time.perf_counter() - start)
                frames = to_native(video.permute(0, 2, 3, 1).float().cpu().numpy())
                reports.append(read_video(frames, clip.caption))
            pipe.disable_freeswim()
            s = summarize(reports)
            print(
                f"| {size} | {name} | {np.mean(seconds):.1f} | {s['count']:.0f} | {s['color']:.0f} | "
                f"{s['shape']:.0f} | {s['direction']:.0f} |"
            )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("part", choices=("kernels", "draft", "freeswim"))
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--prompts", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--size", type=int, default=256, help="draft: video size")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.75, 0.9])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256], help="freeswim: video sizes")
    args = parser.parse_args()
    if args.part == "kernels":
        kernels(args)
    elif args.part == "draft":
        args.prompts, args.steps = args.prompts or 3, args.steps or 10
        draft(args)
    else:
        args.prompts, args.steps = args.prompts or 12, args.steps or 20
        freeswim(args)


if __name__ == "__main__":
    main()
