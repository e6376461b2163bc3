"""Forward time of VidGenTransformer3DModel: block layouts x latent sizes (x attention backends).

    python benchmarks/bench_transformer.py [--device cpu|cuda] [--repeats 5]

Prints a markdown table. Model: width 256 (4 heads x 64), 6 blocks, 16 latent channels.
"""

import argparse
import time

import torch

from vidgen import VidGenTransformer3DModel

GRIDS = [(5, 8, 8), (5, 16, 16), (9, 16, 16)]  # latent (F, H, W)


@torch.no_grad()
def time_forward(model, grid, device, repeats):
    F, H, W = grid
    x = torch.randn(1, F * H * W, 16, device=device)
    text = torch.randn(1, 16, 64, device=device)
    t = torch.tensor([500.0], device=device)
    model(x, text, t, None, F, H, W)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        model(x, text, t, None, F, H, W)
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats * 1000


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    backends = ["sdpa", "flex"] if args.device == "cuda" else ["sdpa"]
    print(f"device: {args.device}, threads: {torch.get_num_threads()}, torch {torch.__version__}\n")
    print("| layout | backend | latent grid (F, H, W) | tokens | ms / forward |")
    print("|---|---|---|---|---|")
    for layout in ("full", "factorized"):
        model = VidGenTransformer3DModel(
            in_channels=16, num_layers=6, num_attention_heads=4, attention_head_dim=64,
            caption_channels=64, block_layout=layout,
        ).to(args.device).eval()  # fmt: skip
        for backend in backends:
            model.set_attention_backend(backend)
            for grid in GRIDS:
                ms = time_forward(model, grid, args.device, args.repeats)
                n = grid[0] * grid[1] * grid[2]
                print(f"| {layout} | {backend} | {grid} | {n} | {ms:.1f} |")


if __name__ == "__main__":
    main()
