"""Streaming speed of the embedded causal student on one device: frames per second and latency to the
first decoded frames, for a few video lengths (4 steps per chunk, no guidance, the pipeline's defaults).

    python benchmarks/bench_streaming.py [--device cuda] [--lengths 17,161,337] \
        [--kv-cache-frames 4] [--opening-frames 9]

Prints a markdown table, each length timed after one warm-up rollout of the same length. With
``--opening-frames N`` each length is timed a second time with the folder's bidirectional model making
the first N frames (its default steps and guidance) and the student extending them: that time counts
in the throughput, and the first frames come once the opening is done.
"""

import argparse
import time

import torch

from vidgen import DEFAULT_MODEL, VidGenAutoregressivePipeline, VidGenPipeline, causal_components


def stream_speed(
    pipe, prompt: str, num_frames: int, device: str = "cpu", seed: int = 0, **kwargs
) -> tuple[float, float]:
    """One streamed rollout (``kwargs`` go to ``pipe.stream``): (frames per second, seconds to the first
    decoded frames). No warm-up."""

    def synchronize():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    start, first, frames = time.perf_counter(), None, 0
    for chunk in pipe.stream(prompt, num_frames=num_frames, generator=torch.Generator().manual_seed(seed), **kwargs):
        synchronize()
        frames += chunk.shape[1]  # (1, f, H, W, 3)
        first = first if first is not None else time.perf_counter() - start
    synchronize()
    return frames / (time.perf_counter() - start), first


def opening_speed(pipe, teacher, prompt: str, num_frames: int, opening_frames: int, device="cpu", seed=0, **kwargs):
    """``teacher`` makes the first ``opening_frames`` frames, then ``pipe`` streams the rest: (frames per
    second with the opening's time counted, seconds to the first frames, the opening's seconds)."""
    tic = time.perf_counter()
    out = teacher(prompt, generator=torch.Generator().manual_seed(seed), output_type="np").frames[0]  # (17, H, W, 3)
    opening = time.perf_counter() - tic
    rest, first = stream_speed(pipe, prompt, num_frames, device, seed, video=list(out[:opening_frames]), **kwargs)
    return num_frames / (opening + num_frames / rest), opening + first, opening


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=DEFAULT_MODEL, help="pipeline folder with transformer_causal/")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--lengths", default="17,161,337")
    parser.add_argument(
        "--kv-cache-frames", type=int, default=None,
        help="latent frames the rolling cache keeps (default: the pipeline's, the training horizon minus a chunk)",
    )  # fmt: skip
    parser.add_argument(
        "--opening-frames", type=int, default=0, metavar="N",
        help="also time each length with the bidirectional model's first N frames (4k + 1) extended",
    )  # fmt: skip
    args = parser.parse_args()
    pipe = VidGenAutoregressivePipeline.from_pretrained(args.model, **causal_components(args.model))
    pipe = pipe.to(args.device)
    pipe.set_progress_bar_config(disable=True)
    teacher = None
    if args.opening_frames:
        teacher = VidGenPipeline.from_pretrained(args.model).to(args.device)
        teacher.set_progress_bar_config(disable=True)
        teacher("a red circle moves right", num_inference_steps=2, output_type="np")  # warm-up
    prompt = "a red circle moves right"
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {args.device} ({where}), kv_cache_frames {args.kv_cache_frames or 'default'}\n")
    print("| frames | rollout | frames/s | first frames (s) |")
    print("|---|---|---|---|")
    kv = dict(kv_cache_frames=args.kv_cache_frames)
    for num_frames in (int(n) for n in args.lengths.split(",")):
        pipe(prompt, num_frames=num_frames, generator=torch.Generator().manual_seed(0), **kv)  # warm-up
        frames_per_second, first = stream_speed(pipe, prompt, num_frames, args.device, seed=1, **kv)
        print(f"| {num_frames} | the student alone | {frames_per_second:.1f} | {first:.3f} |")
        if teacher is not None:
            fps, first, opening = opening_speed(pipe, teacher, prompt, num_frames, args.opening_frames, args.device, 1, **kv)
            print(
                f"| {num_frames} | the teacher's first {args.opening_frames} frames ({opening:.2f} s for all of "
                f"its frames), then the student | {fps:.1f} | {first:.3f} |"
            )


if __name__ == "__main__":
    main()
