"""How well a VAE reconstructs the held-out Shapes clips: PSNR and what the evaluator reads.

    python benchmarks/bench_vae.py                                  # the embedded default's VAE
    python benchmarks/bench_vae.py --vae vidgen/default_model/vae runs/decoder/vae

For each VAE folder, over the evaluator's held-out clips (17 frames, 64x64): PSNR over all frames and
of the first frame, decoding clean latents (t = 0) and as the pipelines decode (noise 0.025, decode
timestep 0.05); the first frame encoded and decoded alone (the image-to-video case: its first latent
frame); and the evaluator's color / shape / direction / count read from the reconstructions.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from vidgen import DEFAULT_MODEL, VidGenVideoAutoencoder
from vidgen import eval as ev
from vidgen.pipelines.common import DEFAULT_DECODE_NOISE_SCALE, DEFAULT_DECODE_TIMESTEP

# (decode timestep, re-noise scale); "as the pipelines" mirrors VidGenPipelineBase.decode_latents.
DECODE_SETTINGS = {
    "clean": (0.0, 0.0),
    "as the pipelines": (DEFAULT_DECODE_TIMESTEP, DEFAULT_DECODE_NOISE_SCALE),
}


def to_uint8(video: torch.Tensor) -> np.ndarray:  # (B, 3, F, H, W) in [-1, 1] -> (B, F, H, W, 3)
    return ((video.clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 4, 1).numpy().astype(np.uint8)


@torch.no_grad()
def reconstruct(vae, x: torch.Tensor, timestep: float, noise_scale: float, batch: int = 20) -> np.ndarray:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(0, len(x), batch):
        z = vae.encode(x[i : i + batch]).latent_dist.mode()
        z = (1 - noise_scale) * z + noise_scale * torch.randn(z.shape, generator=g)
        out.append(to_uint8(vae.decode(z, torch.full((len(z),), timestep)).sample))
    return np.concatenate(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vae", nargs="+", default=[f"{DEFAULT_MODEL}/vae"], help="VAE folders")
    p.add_argument("--num", type=int, default=100, help="held-out clips")
    args = p.parse_args()

    clips = ev.evaluation_set(args.num)
    truth = np.stack([c.frames for c in clips])  # (B, F, H, W, 3) uint8
    x = torch.from_numpy(truth).permute(0, 4, 1, 2, 3).float() / 127.5 - 1  # (B, 3, F, H, W)
    print(f"{args.num} held-out clips, {truth.shape[1]} frames at {truth.shape[2]}x{truth.shape[3]}\n")
    print(
        "| VAE | decode | PSNR all frames (dB) | PSNR first frame (dB) | color | shape | direction | count |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for folder in args.vae:
        vae = VidGenVideoAutoencoder.from_pretrained(folder).eval()
        for name, (timestep, noise_scale) in DECODE_SETTINGS.items():
            y = reconstruct(vae, x, timestep, noise_scale)
            every = np.mean([ev.psnr(y[i, f], truth[i, f]) for i in range(len(y)) for f in range(y.shape[1])])
            first = np.mean([ev.psnr(y[i, 0], truth[i, 0]) for i in range(len(y))])
            s = ev.summarize([ev.read_video(y[i], c.caption) for i, c in enumerate(clips)])
            print(f"| {folder} | {name} | {every:.2f} | {first:.2f} | {s['color']:.1f} | {s['shape']:.1f} | "
                  f"{s['direction']:.1f} | {s['count']:.1f} |")  # fmt: skip
        image = reconstruct(vae, x[:, :, :1], 0.0, 0.0)  # the first frame alone: one latent frame
        alone = np.mean([ev.psnr(image[i, 0], truth[i, 0]) for i in range(len(image))])
        print(f"| {folder} | first frame alone, clean | | {alone:.2f} | | | | |")


if __name__ == "__main__":
    main()
