"""Streaming speed of the embedded causal student on one device: frames per second and latency to the
first decoded frames, for a few video lengths (4 steps per chunk, no guidance, the pipeline's defaults).

    python benchmarks/bench_streaming.py [--device cuda] [--lengths 17,161,337]

Prints a markdown table, each length timed after one warm-up rollout of the same length.
"""

import argparse
import time

import torch

from vidgen import DEFAULT_MODEL, VidGenAutoregressivePipeline, causal_components


def stream_speed(pipe, prompt: str, num_frames: int, device: str = "cpu", seed: int = 0) -> tuple[float, float]:
    """One streamed rollout: (frames per second, seconds to the first decoded frames). No warm-up."""

    def synchronize():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    start, first, frames = time.perf_counter(), None, 0
    for chunk in pipe.stream(prompt, num_frames=num_frames, generator=torch.Generator().manual_seed(seed)):
        synchronize()
        frames += chunk.shape[1]  # (1, f, H, W, 3)
        first = first if first is not None else time.perf_counter() - start
    synchronize()
    return frames / (time.perf_counter() - start), first


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=DEFAULT_MODEL, help="pipeline folder with transformer_causal/")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--lengths", default="17,161,337")
    args = parser.parse_args()
    pipe = VidGenAutoregressivePipeline.from_pretrained(args.model, **causal_components(args.model))
    pipe = pipe.to(args.device)
    pipe.set_progress_bar_config(disable=True)
    prompt = "a red circle moves right"
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {args.device} ({where})\n")
    print("| frames | frames/s | first frames (s) |")
    print("|---|---|---|")
    for num_frames in (int(n) for n in args.lengths.split(",")):
        pipe(prompt, num_frames=num_frames, generator=torch.Generator().manual_seed(0))  # warm-up
        frames_per_second, first = stream_speed(pipe, prompt, num_frames, args.device, seed=1)
        print(f"| {num_frames} | {frames_per_second:.1f} | {first:.3f} |")


if __name__ == "__main__":
    main()
