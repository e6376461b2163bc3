"""Train a VAE decoder for a pipeline's frozen encoder (so the latent space, and every DiT trained in it,
stay valid): a small, fast decoder for streaming, or the pipeline's own decoder trained further.

    python scripts/train_decoder.py --out runs/stream_vae [--model PIPELINE] [--channels 16,24,32]
    python scripts/train_decoder.py --out runs/decoder --init-decoder --frames 9 --batch 8 --steps 3000 --lr 6e-4
    accelerate launch scripts/train_decoder.py ...   # same recipe, any device; resumable

Streaming: while streaming, decoding each chunk costs as much as denoising it (the default decoder's
full-resolution 3D convolutions); a decoder of half the width costs about a quarter. The result,
``<out>/vae``, replaces the pipeline's ``vae`` for ``VidGenAutoregressivePipeline`` (the embedded default
ships it as ``vae_streaming``).

``--init-decoder``: start from the pipeline's decoder (its widths) and train it on. The recipe's VAE
(``train_default.py``) trains 1500 steps on 5-frame windows, so its decoder never sees a latent frame
with neighbours on both sides; the shipped default's decoder had 5000 more steps this way on 9-frame
windows (3000 at lr 6e-4, then 2000 at 3e-4 with ``--seed 1``), which raised image-to-video's first
frame from 27.3 to 31.0 dB. Only the decoder trains, so the latents do not move.

The loss is the default VAE's: object-weighted pixel MSE on windows of ``--frames`` frames (5: two latent
frames), with a share of latents noised to ``t ~ U[0, 0.15]`` so the decoder also does the last
denoising step.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator

from vidgen import DEFAULT_MODEL, VidGenVideoAutoencoder
from vidgen.data import shapes
from vidgen.training.checkpoint import (
    append_csv,
    load_latest_checkpoint,
    save_checkpoint,
    save_model,
)
from vidgen.training.distributed import average_gradients


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="run folder (checkpoints, log, the VAE)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="pipeline folder whose VAE encoder is kept")
    p.add_argument("--channels", default="16,24,32", help="decoder block widths, comma-separated")
    p.add_argument(
        "--init-decoder", action="store_true",
        help="start from the pipeline's decoder and train it on (its widths; --channels is ignored)",
    )  # fmt: skip
    p.add_argument("--frames", type=int, default=5, help="frames per training window: 4k + 1, at most 17")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--object-weight", type=float, default=2.0, help="pixel loss weight on objects")
    p.add_argument("--noise-prob", type=float, default=0.25, help="share of steps that decode noised latents")
    p.add_argument(
        "--random-colors", type=float, default=0.0, help="share of clips with random object colors"
    )
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.frames % 4 != 1 or not 5 <= args.frames <= shapes.NATIVE_FRAMES:
        p.error(f"--frames must be 4k + 1 in [5, {shapes.NATIVE_FRAMES}]; got {args.frames}")
    return args


def main(argv=None):
    args = parse_args(argv)
    run = Path(args.out)
    run.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())

    # 1. The pipeline's VAE; a copy with a new (or the same) decoder and the same, frozen encoder.
    source = VidGenVideoAutoencoder.from_pretrained(args.model, subfolder="vae")
    config = {k: v for k, v in source.config.items() if not k.startswith("_")}
    if not args.init_decoder:
        config["decoder_block_out_channels"] = tuple(int(c) for c in args.channels.split(","))
    vae = VidGenVideoAutoencoder.from_config(config)
    if args.init_decoder:
        vae.load_state_dict(source.state_dict())  # the whole VAE: its decoder trains on
    else:
        encoder_state = {k: v for k, v in source.state_dict().items() if k.startswith(("enc_", "latents_"))}
        vae.load_state_dict(encoder_state, strict=False)
    encoder = [p for name, p in vae.named_parameters() if name.startswith("enc_")]
    for p in encoder:
        p.requires_grad_(False)
    decoder = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(decoder, lr=args.lr, weight_decay=0.0)
    start, tensors, state = load_latest_checkpoint(run / "checkpoints", {"optimizer": opt}, vars(args))
    if tensors is not None:
        vae.load_state_dict(tensors)
    vae, opt = accelerator.prepare(vae, opt)
    model = accelerator.unwrap_model(vae)

    # 2. Decoder training on fresh Shapes windows (data and noise: functions of the step).
    tic = time.time()
    for step in range(start, args.steps):
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        first = 4 * int(torch.randint(0, (shapes.NATIVE_FRAMES - args.frames) // 4 + 1, (1,), generator=g))
        seeds = np.arange(step * args.batch, (step + 1) * args.batch) + 30_000_000
        window = slice(first, first + args.frames)
        x, _, masks = shapes.render_training_batch(seeds, window, args.random_colors)
        x = x.to(accelerator.device)
        weight = 1 + (args.object_weight - 1) * torch.from_numpy(masks)[:, None].float().to(x.device)
        with torch.no_grad():
            z = model.encode(x).latent_dist.mode()
        t = torch.zeros(len(x), device=x.device)
        if float(torch.rand((), generator=g)) < args.noise_prob:  # the decoder's last denoising step
            t = torch.rand(len(x), generator=g).to(x.device) * 0.15
            z = (1 - t.view(-1, 1, 1, 1, 1)) * z + t.view(-1, 1, 1, 1, 1) * torch.randn(
                z.shape, generator=g
            ).to(z)
        for group in opt.param_groups:
            group["lr"] = (
                args.lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
            )
        y = model.decode(z, t).sample
        loss = (weight * (y - x) ** 2).mean()
        opt.zero_grad()
        accelerator.backward(loss)
        average_gradients(accelerator, decoder)  # trained through decode(), outside DDP's forward
        opt.step()
        if step % 25 == 0 or step == args.steps - 1:
            psnr = 10 * math.log10(4 / F.mse_loss(y.clamp(-1, 1), x).item())  # range 2 -> peak^2 = 4
            append_csv(
                run / "log.csv",
                {"step": step, "loss": loss.item(), "psnr_db": psnr, "seconds": time.time() - tic},
            )
            print(
                f"decoder step {step} loss {loss.item():.4f} psnr {psnr:.2f} dB ({time.time() - tic:.0f}s)",
                flush=True,
            )
        if (step + 1) % args.checkpoint_every == 0 and accelerator.is_main_process:
            save_checkpoint(
                run / "checkpoints", step + 1, model.state_dict(), {"optimizer": opt}, {"args": vars(args)}
            )

    # 3. Export.
    if accelerator.is_main_process:
        save_model(model.eval(), run / "vae")
        print(f"wrote {run / 'vae'}")


if __name__ == "__main__":
    main()
