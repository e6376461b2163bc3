"""Speed of the embedded default model: 17 frames at 64x64 with the default number of steps.

    python benchmarks/bench_default_model.py [--repeats 3] [--steps N] [--device cuda] [--dtype bfloat16]

Prints a markdown table (seconds per video, after one warm-up run). Target on a 2-core CPU: <= 5 s.
"""

import argparse
import time

import torch

from vidgen import DEFAULT_MODEL, VidGenPipeline
from vidgen.pipelines.common import DEFAULT_GUIDANCE_SCALE  # what the pipeline uses when not given


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="default: the pipeline's")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()
    pipe = VidGenPipeline.from_pretrained(args.model, dtype=getattr(torch, args.dtype)).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(prompt="a red circle moves right", output_type="np")
    if args.steps:
        kwargs["num_inference_steps"] = args.steps
    pipe(**kwargs, generator=torch.Generator().manual_seed(0))  # warm-up
    times = []
    for i in range(args.repeats):
        start = time.perf_counter()
        video = pipe(**kwargs, generator=torch.Generator().manual_seed(i)).frames[0]
        times.append(time.perf_counter() - start)
    steps = pipe.num_timesteps
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {args.device} ({where}), {args.dtype}\n")
    print("| video | steps | guidance | mean s | min s |")
    print("|---|---|---|---|---|")
    print(
        f"| {video.shape[0]}x{video.shape[1]}x{video.shape[2]} | {steps} | {DEFAULT_GUIDANCE_SCALE:g} "
        f"| {sum(times) / len(times):.2f} | {min(times):.2f} |"
    )


if __name__ == "__main__":
    main()
