"""Train the stage-two adapter of two-stage hierarchical synthesis (``VidGenHierarchicalPipeline``).

    python scripts/train_hierarchical.py --out runs/hierarchical --sizes 128,256
    accelerate launch scripts/train_hierarchical.py --out runs/hierarchical   # same recipe, any device

The DiT stays frozen; only the :class:`~vidgen.models.turbo2k.HierarchicalAdapter` trains (zero-initialised,
so step 0 is the plain DiT). Per step, on a clip rendered at the model's size and at a high resolution
(the same scene, scaled):

1. guidance: the DiT's block features of the clean low-resolution latents at timestep 0 (no gradients),
   through the adapter, upsampled to the high-resolution token grid;
2. flow matching at high resolution: the high-resolution latents noised at a level shifted for their
   token count, the DiT's velocity with the adapter's residuals, the loss weighted up on object tokens.

Steps: 1. latent cache (per size, shards of 32 written atomically; a rerun skips existing ones);
2. adapter; 3. training (resumable; data order and noise are functions of seed and step);
4. export of ``<out>/hierarchical_adapter`` (copy it into a pipeline folder to ship it).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from diffusers.optimization import get_cosine_schedule_with_warmup

from vidgen import DEFAULT_MODEL, HIERARCHICAL_SUBFOLDER, VidGenPipeline
from vidgen.data import shapes
from vidgen.models.turbo2k import HierarchicalAdapter
from vidgen.training.cache import module_fingerprint, sharded_cache
from vidgen.training.checkpoint import (
    append_csv,
    load_latest_checkpoint,
    save_checkpoint,
    save_model,
)

SHARD = 32


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="run folder (cache, checkpoints, logs, the adapter)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="pipeline folder whose DiT the adapter guides")
    p.add_argument("--sizes", default="128,256", help="high resolutions to train at, comma-separated")
    p.add_argument("--blocks", default="1,3", help="DiT blocks that guide and are guided")
    p.add_argument("--clips", type=int, default=256, help="clips per size in the cache")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--object-weight", type=float, default=8.0, help="loss weight of object tokens")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=25)
    return p.parse_args(argv)


def pack(x: torch.Tensor) -> torch.Tensor:  # (B, C, F, H, W) -> (B, N, C)
    return x.flatten(2).transpose(1, 2)


@torch.no_grad()
def build_cache(folder: Path, size: int, clips: int, pipe) -> dict:
    """Low-resolution and ``size`` latents (normalised) of the same scenes, tokens, object tokens; in
    shards keyed by the VAE's fingerprint and the size."""
    low = pipe.default_video_size[1]
    t, s = pipe.vae_temporal_compression_ratio, pipe.vae_spatial_compression_ratio

    def shard(start: int, end: int) -> dict:
        seeds = np.arange(start, end) + 30_000_000  # not the DiT's training seeds
        x_low, captions, _ = shapes.render_training_batch(seeds, size=low)
        x_high, _, masks = shapes.render_training_batch(seeds, size=size)
        return {
            "low": pipe.normalize_latents(pipe.vae.encode(x_low).latent_dist.mode()),
            "high": pipe.normalize_latents(pipe.vae.encode(x_high).latent_dist.mode()),
            "tokens": pipe.tokenizer(
                captions, padding="max_length", max_length=16, return_tensors="pt"
            ).input_ids,
            "objects": shapes.object_tokens(masks, t, s),  # (b, F, H, W) on the high-resolution grid
        }

    return sharded_cache(folder, clips, SHARD, {"size": size, "vae": module_fingerprint(pipe.vae)}, shard)


def adapter_loss(args, batch, pipe, adapter, g):
    """Flow matching of the guided DiT at high resolution (only the adapter has gradients)."""
    low, high, ids, objects = batch["low"], batch["high"], batch["tokens"], batch["objects"]
    device, B, C = high.device, len(high), high.shape[1]
    low_grid, high_grid = tuple(low.shape[2:]), tuple(high.shape[2:])
    empty = torch.zeros_like(ids[0])
    empty[0] = 1  # "" -> just </s>: the adapter also learns the unconditional row of guidance
    ids = torch.where((torch.rand(B, generator=g) < 0.1)[:, None].to(device), empty, ids)
    dit = pipe.transformer
    with torch.no_grad():
        text = pipe.text_encoder(ids)[0]
        hidden = dit(
            pack(low), text, torch.zeros(B, device=device), None, *low_grid, output_hidden_states=True
        ).hidden_states
    residuals = adapter(hidden, low_grid, high_grid)  # {block: (B, N, D)}
    mu = pipe.scheduler.shift_for_tokens(math.prod(high_grid))
    u = torch.rand(B, generator=g).clamp(1e-4, 1 - 1e-4)
    sigma = (math.exp(mu) / (math.exp(mu) + (1 / u - 1))).to(device)  # (B,) as the sampler shifts them
    noise = torch.randn(high.shape, generator=g).to(device)
    s = sigma.view(-1, 1, 1, 1, 1)
    v = dit(pack((1 - s) * high + s * noise), text, sigma * 1000, None, *high_grid, block_residuals=residuals)
    weight = (1 + args.object_weight * objects.float()).flatten(1)[..., None]  # (B, N, 1)
    return (weight * (v.sample - pack(noise - high)) ** 2).sum() / (weight.sum() * C)


def main(argv=None):
    args = parse_args(argv)
    run = Path(args.out)
    run.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    device = accelerator.device

    # 1. The frozen pipeline and the cache of low- and high-resolution latents.
    pipe = VidGenPipeline.from_pretrained(args.model)
    for module in (pipe.vae, pipe.text_encoder, pipe.transformer):
        module.eval().requires_grad_(False)
    sizes = [int(s) for s in args.sizes.split(",")]
    low = pipe.default_video_size[1]
    if any(size % low or size <= low for size in sizes):
        raise ValueError(f"--sizes must be multiples of the model's size {low} above it; got {sizes}")
    with accelerator.main_process_first():  # one process writes the cache, the others read it
        caches = [build_cache(run / f"cache_{size}", size, args.clips, pipe) for size in sizes]
    pipe.to(device)

    # 2. The adapter.
    torch.manual_seed(args.seed)
    dit = pipe.transformer.config
    blocks = tuple(int(b) for b in args.blocks.split(","))
    if max(blocks) >= dit.num_layers:
        raise ValueError(f"--blocks must be DiT block indices below {dit.num_layers}; got {blocks}")
    adapter = HierarchicalAdapter(dit.num_attention_heads * dit.attention_head_dim, blocks).to(device)
    opt = torch.optim.AdamW(adapter.parameters(), lr=args.lr, weight_decay=0.0)
    lr_schedule = get_cosine_schedule_with_warmup(opt, 20, args.steps)
    optimizers = {"optimizer": opt, "lr_schedule": lr_schedule}
    start, tensors, state = load_latest_checkpoint(run / "checkpoints", optimizers, vars(args))
    if tensors is not None:
        adapter.load_state_dict(tensors)
    adapter, opt = accelerator.prepare(adapter, opt)

    # 3. Training: one size per step, in turn.
    tic = time.time()
    for step in range(start, args.steps):
        g = torch.Generator().manual_seed(args.seed * 7_000_003 + step * 1009 + accelerator.process_index)
        cache = caches[step % len(caches)]
        idx = torch.randint(0, len(cache["high"]), (args.batch,), generator=g)
        batch = {k: v[idx].to(device) for k, v in cache.items()}
        loss = adapter_loss(args, batch, pipe, adapter, g)  # through its wrapper: gradients sync
        opt.zero_grad()
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(adapter.parameters(), 1.0)
        opt.step()
        lr_schedule.step()
        if (step % 5 == 0 or step == args.steps - 1) and accelerator.is_main_process:
            size = sizes[step % len(sizes)]
            append_csv(
                run / "log.csv",
                {"step": step, "size": size, "loss": loss.item(), "seconds": time.time() - tic},
            )
            print(f"step {step} size {size} loss {loss.item():.4f} ({time.time() - tic:.0f}s)", flush=True)
        if (step + 1) % args.checkpoint_every == 0 and accelerator.is_main_process:
            state = accelerator.unwrap_model(adapter).state_dict()
            save_checkpoint(run / "checkpoints", step + 1, state, optimizers, {"args": vars(args)})

    # 4. Export.
    if accelerator.is_main_process:
        save_model(accelerator.unwrap_model(adapter).eval(), run / HIERARCHICAL_SUBFOLDER)
        print(f"wrote {run / HIERARCHICAL_SUBFOLDER}")


if __name__ == "__main__":
    main()
