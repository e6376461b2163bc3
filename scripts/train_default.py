"""Train vidgen's embedded default model on the Shapes world, from a seed, on a CPU in about two hours.

    python scripts/train_default.py --out runs/default            # all stages, resumable
    accelerate launch scripts/train_default.py --out runs/default  # same recipe, any device
    python scripts/train_default.py --out runs/default --export vidgen/default_model
    # continue a trained pipeline (its VAE, DiT and text encoder), as the shipped DiT's last legs were made
    # (exact text positions; then 7 blocks, the new ones starting as the identity; docs/default-model.md has the steps):
    python scripts/train_default.py --out runs/ft --init-from PIPELINE --text-positions exact --dit-steps 2000 --lr 3e-4
    python scripts/train_default.py --out runs/deep --init-from PIPELINE --text-positions exact --dit-layers 7 --lr 4e-4

Stages (each skipped when its output exists; a killed run resumes from its last checkpoint):
1. VAE: ``VidGenVideoAutoencoder`` on 5-frame windows of freshly rendered clips (a causal convolutional
   VAE learns filters that apply to any length, at a third of the cost of 17-frame clips). The decoder
   also learns to finish denoising: a share of the batches decode latents noised at ``t ~ U[0, 0.15]``.
   ``--vae-random-colors 0.5`` gives half of the VAE's clips objects of random colors: a VAE that has
   seen only the world's seven colors decodes any other as the nearest of them (orange comes out red),
   and then no fine-tune of the DiT can teach a new color.
2. Latent cache: N training clips (17 frames) encoded once, with captions and object-token masks.
3. DiT + text encoder: flow matching with VDT masks (given tokens clean at per-token timestep 0, loss
   only on generated tokens), object tokens weighted up (the black background is learned first and is
   almost every token), 10% caption dropout for classifier-free guidance. The DiT adds a learned embedding
   of each text token's absolute position (``caption_positions``): the small T5 learns context-free word
   vectors, and without their places "a red circle ... and a blue square ..." does not say which is red.
   ``--text-grounding W`` adds a phrase loss on the text encoder (``grounding_loss``): every word of an
   object's phrase must tell, through a linear head, that object's color, shape and motion. Trained only
   on the DiT's loss, the encoder spreads each object's motion over both objects' words.
   ``--attention-grounding W`` adds a binding loss on the DiT's text cross-attention (``binding_loss``):
   the latent tokens of each object must attend to its own phrase rather than the other object's.
   ``--freeze-text-encoder`` trains the DiT alone (a causal student distilled with the text encoder
   keeps working with the result).
   ``--logit-normal-share 0.5 --logit-mean 1`` draws half of the noise levels logit-normal instead of
   uniform, towards the high noise where an object's place and motion are decided (``noise_draws``).
   ``--dit-ema 0.999`` keeps an exponential moving average of the weights and exports it (resuming a
   run's checkpoint with a longer ``--dit-steps`` continues training on the stretched cosine schedule).
4. Export: a diffusers pipeline folder (safetensors) with ``VidGenPipeline``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers.training_utils import EMAModel, compute_density_for_timestep_sampling
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import T5Config, T5EncoderModel
from transformers.models.t5.modeling_t5 import T5Attention

from vidgen import VidGenPipeline, VidGenTransformer3DModel
from vidgen.data import shapes
from vidgen.data.text import word_tokenizer
from vidgen.masks import sample_default_training_mask
from vidgen.models.autoencoder import AUTOENCODER_PRESETS, VidGenVideoAutoencoder
from vidgen.schedulers import LTX_SCHEDULER_CONFIG, VidGenFlowMatchScheduler
from vidgen.training.checkpoint import save_pipeline
from vidgen.training.distributed import average_gradients
from vidgen.training.grounding import (
    GROUNDING,
    CrossAttentionProbe,
    binding_loss,
    binding_targets,
    caption_phrases,
    grounding_loss,
    token_owners,
)

MAX_TOKENS = 16  # tokenizer length of a caption (the longest Shapes caption has 13 tokens)
# The DiT's trunk; its input channels and latent grid come from the VAE.
DIT_CONFIG = dict(
    num_layers=5,
    num_attention_heads=3,
    attention_head_dim=64,
    caption_channels=64,
    block_layout="full",
    caption_positions=MAX_TOKENS,  # the text encoder's words come without their place (see the DiT)
)
T5_CONFIG = dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4)
# How finely the text encoder's attention tells word positions apart: (buckets, max distance) of T5's
# relative-position bias. "coarse" (the first default model) has exact buckets for distances 0 and 1
# only; every distance from 2 to 15 in one direction shares one bucket, so from the word "red", the
# "right" of "a red circle moves right" looks like any later word, the other object's motion too, and
# binding attributes to objects must go through chains of neighbours. "exact" gives every distance a
# padded caption has (up to 15) its own bucket.
TEXT_POSITIONS = {"coarse": (8, 128), "exact": (32, 16)}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="run folder (checkpoints, cache, logs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vae-steps", type=int, default=1500)
    p.add_argument("--vae-lr", type=float, default=2e-3)
    p.add_argument(
        "--vae-object-weight", type=float, default=2.0, help="pixel loss weight on objects vs background"
    )
    p.add_argument(
        "--vae-noise-prob", type=float, default=0.25, help="share of steps that decode noised latents"
    )
    p.add_argument("--vae-batch", type=int, default=12)
    p.add_argument(
        "--vae-random-colors",
        type=float,
        default=0.0,
        help="share of VAE clips whose objects take random colors",
    )
    p.add_argument("--vae-preset", choices=sorted(AUTOENCODER_PRESETS), default="shapes")
    p.add_argument("--vae-channels", default=None, help="VAE block widths, comma-separated")
    p.add_argument(
        "--vae-latent-channels", type=int, default=None, help="latent channels (default: the preset's)"
    )
    p.add_argument("--stop-after", choices=("vae", "cache"), default=None, help="stop after this stage")
    p.add_argument("--clips", type=int, default=8000, help="training clips in the latent cache")
    p.add_argument("--dit-steps", type=int, default=3800)
    p.add_argument(
        "--dit-layers", type=int, default=DIT_CONFIG["num_layers"],
        help="DiT blocks; with --init-from a deeper DiT keeps the trained blocks and inserts new ones that "
        "start as the identity",
    )  # fmt: skip
    p.add_argument("--dit-batch", type=int, default=24)
    p.add_argument("--lr", type=float, default=7e-4)
    p.add_argument(
        "--dit-ema", type=float, default=0.0,
        help="EMA decay of the DiT and text encoder weights, exported instead of the raw ones (0: off)",
    )  # fmt: skip
    p.add_argument(
        "--object-weight", type=float, default=8.0, help="loss weight of object tokens vs background"
    )
    p.add_argument(
        "--logit-normal-share", type=float, default=0.0,
        help="share of samples whose noise level is drawn logit-normal (diffusers' SD3 scheme, mean "
        "--logit-mean, std 1) instead of uniform, before the sampler's shift",
    )  # fmt: skip
    p.add_argument(
        "--logit-mean", type=float, default=1.0,
        help="mean of the logit-normal draw; > 0 favours high noise, where layout and motion are decided",
    )  # fmt: skip
    p.add_argument(
        "--two-object-share", type=float, default=None,
        help="draw two-object clips with this probability (default: as often as the cache holds them, half)",
    )  # fmt: skip
    p.add_argument(
        "--t2v-share", type=float, default=0.35,
        help="share of clips trained as text-to-video (no frame given); the rest are image-to-video (0.15) "
        "and VDT's task masks",
    )  # fmt: skip
    p.add_argument(
        "--text-positions", choices=sorted(TEXT_POSITIONS), default="coarse",
        help="relative-position buckets of the text encoder (see TEXT_POSITIONS)",
    )  # fmt: skip
    p.add_argument(
        "--init-from", default=None,
        help="start from this pipeline folder: its VAE, DiT and text encoder (fresh optimizer and schedule); "
        "a different --text-positions keeps its function (the position bias is remapped)",
    )  # fmt: skip
    p.add_argument(
        "--text-grounding", type=float, default=0.0,
        help="weight of the text encoder's phrase loss: every word of an object's phrase predicts that "
        "object's color, shape and motion (see phrase_targets; 0: off)",
    )  # fmt: skip
    p.add_argument(
        "--attention-grounding", type=float, default=0.0,
        help="weight of the binding loss on the DiT's text cross-attention: an object's latent tokens "
        "attend to its own phrase, not the other object's (see binding_loss; 0: off)",
    )  # fmt: skip
    p.add_argument(
        "--attention-blocks", default="all", help="DiT blocks the binding loss watches, comma-separated"
    )
    p.add_argument(
        "--freeze-text-encoder", action="store_true",
        help="train the DiT only; the text encoder keeps its weights (students distilled with it stay valid)",
    )  # fmt: skip
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--export", default=None, help="write the pipeline folder here when training is done")
    args = p.parse_args()
    if args.freeze_text_encoder and args.text_grounding > 0:
        p.error("--text-grounding trains the text encoder; it cannot be combined with --freeze-text-encoder")
    if not 0 <= args.t2v_share <= 0.85:  # image-to-video keeps its 0.15
        p.error(f"--t2v-share must be in [0, 0.85]; got {args.t2v_share}")
    return args


# --------------------------------------------------------------------------------------------------
# Helpers: checkpoints, learning rate, logs (the data: shapes.render_training_batch).
def save_checkpoint(folder: Path, step: int, tensors: dict, optimizer, keep: int = 2) -> None:
    """Atomic: write into a temporary folder, then rename; keep the last ``keep``."""
    final = folder / f"step_{step:06d}"
    tmp = folder / f".tmp_step_{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().clone() for k, v in tensors.items()}, tmp / "weights.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "step.json").write_text(json.dumps({"step": step}))
    os.replace(tmp, final)
    for old in sorted(folder.glob("step_*"))[:-keep]:
        shutil.rmtree(old)


def latest_checkpoint(folder: Path):
    done = sorted(folder.glob("step_*"))
    if not done:
        return 0, None, None
    last = done[-1]
    step = json.loads((last / "step.json").read_text())["step"]
    return step, load_file(last / "weights.safetensors"), torch.load(last / "optimizer.pt", weights_only=True)


def split_state(tensors: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def text_encoder_config(vocab_size: int, positions: str) -> T5Config:
    buckets, max_distance = TEXT_POSITIONS[positions]
    return T5Config(
        vocab_size=vocab_size, pad_token_id=0, eos_token_id=1, dropout_rate=0.0, **T5_CONFIG,
        relative_attention_num_buckets=buckets, relative_attention_max_distance=max_distance,
    )  # fmt: skip


def grown_block_order(old: int, new: int) -> list[int | None]:
    """Which trained block each block of a deeper DiT starts from (None: a new block), the new ones
    spread evenly between the trained ones: 5 -> 7 gives [0, 1, None, 2, None, 3, 4]."""
    if new < old:
        raise ValueError(f"--dit-layers must be at least the trained DiT's {old} blocks; got {new}")
    k = new - old
    after = [max(1, round((i + 1) * old / (k + 1))) for i in range(k)]  # trained blocks before each new one
    order = []
    for i in range(old):
        order += [i] + [None] * after.count(i + 1)
    return order


def init_dit_from(trained: VidGenTransformer3DModel, dit: VidGenTransformer3DModel) -> None:
    """Copy ``trained`` into ``dit``, which may have more blocks: each new block has its attention,
    cross-attention and MLP output projections zeroed, so it adds nothing and ``dit`` computes exactly
    what ``trained`` does until training moves them (Net2Net-style deepening). A ``trained`` without
    a caption position embedding leaves ``dit``'s at zero (also no change)."""
    order = grown_block_order(len(trained.transformer_blocks), len(dit.transformer_blocks))
    state = {k: v for k, v in trained.state_dict().items() if not k.startswith("transformer_blocks.")}
    for j, i in enumerate(order):
        block = dit.transformer_blocks[j] if i is None else trained.transformer_blocks[i]
        if i is None:
            for out in (block.attn1.to_out[0], block.attn2.to_out[0], block.ff.net[2]):
                nn.init.zeros_(out.weight)
                nn.init.zeros_(out.bias)
        state |= {f"transformer_blocks.{j}.{k}": v for k, v in block.state_dict().items()}
    if dit.caption_position_embedding is not None and "caption_position_embedding" not in state:
        state["caption_position_embedding"] = dit.caption_position_embedding.detach()  # zeros: no change yet
    dit.load_state_dict(state)


def init_from_pipeline(folder: Path, dit, t5) -> None:
    """Load a trained pipeline's DiT and text encoder into ``dit`` and ``t5``. A deeper ``dit`` gets new
    identity blocks (``init_dit_from``). When ``t5`` buckets relative positions differently, every
    relative distance keeps the bias it had: bucket b of the new table takes the old bias of the
    distances that fall into b (the function is unchanged)."""
    init_dit_from(VidGenTransformer3DModel.from_pretrained(folder / "transformer"), dit)
    old = T5EncoderModel.from_pretrained(folder / "text_encoder").eval()
    state = old.state_dict()
    key = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"  # (buckets, heads)
    bucket = lambda d, c: T5Attention._relative_position_bucket(  # noqa: E731
        d, True, c.relative_attention_num_buckets, c.relative_attention_max_distance
    )
    d = torch.arange(1 - MAX_TOKENS, MAX_TOKENS)  # every relative distance a caption can have
    old_b, new_b = bucket(d, old.config), bucket(d, t5.config)
    table = torch.zeros(t5.config.relative_attention_num_buckets, state[key].shape[1])
    table[new_b] = state[key][old_b]
    state[key] = table
    t5.load_state_dict(state)
    ids = torch.arange(2, 2 + MAX_TOKENS)[None]  # the longest caption: the two encoders must agree on it
    with torch.no_grad():
        gap = (t5.eval()(ids)[0] - old(ids)[0]).abs().max().item()
    t5.train()
    if gap > 1e-4:
        raise ValueError(f"--init-from: the remapped text encoder differs from {folder} by {gap:.2e}")
    print(f"initialised from {folder} (text encoder max difference {gap:.1e})", flush=True)


def clip_weights(tokens: torch.Tensor, two_object_share: float | None) -> torch.Tensor | None:
    """Probabilities ``(n,)`` of drawing each cached clip so that two-object captions (those with "and")
    make up ``two_object_share`` of the draws; None keeps every clip equally likely (``torch.randint``,
    the random stream the shipped model was trained with)."""
    if two_object_share is None:
        return None
    if not 0 < two_object_share < 1:
        raise ValueError(f"--two-object-share must be in (0, 1); got {two_object_share}")
    two = (tokens == word_tokenizer().convert_tokens_to_ids("and")).any(1)  # (n,)
    if two.all() or not two.any():
        raise ValueError("--two-object-share needs both one-object and two-object clips in the cache")
    share = torch.where(two, two_object_share / two.sum(), (1 - two_object_share) / (~two).sum())
    return share.double()


def noise_draws(n: int, g: torch.Generator, logit_normal_share: float, logit_mean: float) -> torch.Tensor:
    """``(n,)`` draws in (0, 1) that the sampler's shift turns into noise levels: uniform, or for a share
    of them logit-normal (diffusers' SD3 scheme, std 1), which with ``logit_mean`` > 0 trains more at the
    high noise levels where layout and motion are decided. A share of 0 keeps the recipe's random stream."""
    if not 0 <= logit_normal_share <= 1:
        raise ValueError(f"--logit-normal-share must be in [0, 1]; got {logit_normal_share}")
    u = torch.rand(n, generator=g)
    if logit_normal_share > 0:
        high = torch.rand(n, generator=g) < logit_normal_share
        logit_normal = compute_density_for_timestep_sampling("logit_normal", n, logit_mean, 1.0, generator=g)
        u = torch.where(high, logit_normal, u)
    return u.clamp(1e-4, 1 - 1e-4)


def cosine_lr(step, total, peak, warmup=100):
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))


def log(run: Path, name: str, row: dict) -> None:
    path = run / f"{name}.csv"
    new = not path.exists()
    with path.open("a") as f:
        if new:
            f.write(",".join(row) + "\n")
        f.write(",".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in row.values()) + "\n")


# --------------------------------------------------------------------------------------------------
# Stage 1: the VAE.
def train_vae(args, run: Path, accelerator: Accelerator) -> VidGenVideoAutoencoder:
    final = run / "vae"
    if (final / "config.json").exists():
        return VidGenVideoAutoencoder.from_pretrained(final)
    torch.manual_seed(args.seed)
    config = dict(AUTOENCODER_PRESETS[args.vae_preset])
    if args.vae_channels:
        config["block_out_channels"] = tuple(int(c) for c in args.vae_channels.split(","))
    if args.vae_latent_channels:
        config["latent_channels"] = args.vae_latent_channels
    vae = VidGenVideoAutoencoder(**config)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    ckpt = run / "vae_ckpt"
    start, tensors, opt_state = latest_checkpoint(ckpt)
    if tensors is not None:
        vae.load_state_dict(tensors)
        opt.load_state_dict(opt_state)
    vae, opt = accelerator.prepare(vae, opt)
    tic = time.time()
    for step in range(start, args.vae_steps):
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        start_frame = 4 * int(torch.randint(0, 4, (1,), generator=g))
        seeds = np.arange(step * args.vae_batch, (step + 1) * args.vae_batch) + 10_000_000
        x, _, masks = shapes.render_training_batch(
            seeds, window=slice(start_frame, start_frame + 5), random_colors=args.vae_random_colors
        )
        x = x.to(accelerator.device)
        weight = 1 + (args.vae_object_weight - 1) * torch.from_numpy(masks)[:, None].float().to(x.device)
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, args.vae_steps, args.vae_lr)
        model = accelerator.unwrap_model(vae)
        z = model.encode(x).latent_dist.mode()
        t = torch.zeros(len(x), device=x.device)
        if (
            float(torch.rand((), generator=g)) < args.vae_noise_prob
        ):  # the decoder learns the last denoising step
            t = torch.rand(len(x), generator=g).to(x.device) * 0.15
            z = (1 - t.view(-1, 1, 1, 1, 1)) * z + t.view(-1, 1, 1, 1, 1) * torch.randn(
                z.shape, generator=g
            ).to(z)
        y = model.decode(z, t).sample
        loss = (weight * (y - x) ** 2).mean() + 1e-4 * z.pow(2).mean()
        opt.zero_grad()
        accelerator.backward(loss)
        average_gradients(accelerator, model.parameters())  # trained through encode/decode, outside DDP
        opt.step()
        if step % 25 == 0 or step == args.vae_steps - 1:
            psnr = 10 * math.log10(4 / F.mse_loss(y.clamp(-1, 1), x).item())  # range 2 -> peak^2 = 4
            log(
                run,
                "vae_log",
                {"step": step, "loss": loss.item(), "psnr_db": psnr, "seconds": time.time() - tic},
            )
            print(f"vae step {step} loss {loss.item():.4f} psnr {psnr:.1f} dB", flush=True)
        if (step + 1) % args.checkpoint_every == 0:
            save_checkpoint(ckpt, step + 1, model.state_dict(), opt)
    vae = accelerator.unwrap_model(vae).eval()
    # Per-channel latent statistics over fresh clips, for normalisation in the pipelines.
    with torch.no_grad():
        x, _, _ = shapes.render_training_batch(np.arange(256) + 20_000_000)
        z = torch.cat([vae.encode(x[i : i + 32]).latent_dist.mode() for i in range(0, 256, 32)])
        vae.latents_mean.copy_(z.mean(dim=(0, 2, 3, 4)))
        vae.latents_std.copy_(z.std(dim=(0, 2, 3, 4)))
    vae.save_pretrained(final)
    return vae


# --------------------------------------------------------------------------------------------------
# Stage 2: the latent cache.
@torch.no_grad()
def build_cache(args, run: Path, vae, tokenizer) -> dict:
    path = run / f"cache_{args.clips}.safetensors"
    if path.exists():
        return load_file(path)
    latents, tokens, objects = [], [], []
    for start in range(0, args.clips, 64):
        seeds = np.arange(start, min(start + 64, args.clips))
        x, captions, masks = shapes.render_training_batch(seeds)
        z = vae.encode(x).latent_dist.mode()
        mean, std = vae.latents_mean.view(1, -1, 1, 1, 1), vae.latents_std.view(1, -1, 1, 1, 1)
        latents.append((z - mean) / std)
        tokens.append(
            tokenizer(captions, padding="max_length", max_length=MAX_TOKENS, return_tensors="pt").input_ids
        )
        objects.append(
            shapes.object_tokens(masks, vae.temporal_compression_ratio, vae.spatial_compression_ratio)
        )  # (B, F, H, W) latent tokens an object touches
        print(f"cache {start + len(seeds)}/{args.clips}", flush=True)
    cache = {"latents": torch.cat(latents), "tokens": torch.cat(tokens), "objects": torch.cat(objects)}
    save_file(cache, path)
    return cache


@torch.no_grad()
def token_objects(run: Path, cache: dict, vae) -> torch.Tensor:
    """``(n, N)`` int8: which object each latent token of each cached clip belongs to (0 or 1; -1 for
    the background and tokens both objects touch), for the binding loss; computed once per cache."""
    n = len(cache["latents"])
    path = run / f"token_objects_{n}.safetensors"
    if path.exists():
        return load_file(path)["token_objects"]
    which = token_owners(cache["objects"], vae.temporal_compression_ratio, vae.spatial_compression_ratio)
    save_file({"token_objects": which}, path)
    return which


# --------------------------------------------------------------------------------------------------
# Stage 3: the DiT and the text encoder, with VDT masks.
def pack(x: torch.Tensor) -> torch.Tensor:  # (B, C, F, H, W) -> (B, N, C)
    return x.flatten(2).transpose(1, 2)


def train_dit(args, run: Path, accelerator: Accelerator, cache: dict, vocab_size: int, vae):
    final = run / "dit"
    if (final / "transformer" / "config.json").exists():
        return (
            VidGenTransformer3DModel.from_pretrained(final / "transformer"),
            T5EncoderModel.from_pretrained(final / "text_encoder"),
        )
    torch.manual_seed(args.seed + 1)
    latents, tokens, objects = cache["latents"], cache["tokens"], cache["objects"]
    n, (C, Fl, H, W) = len(latents), latents.shape[1:]
    config = DIT_CONFIG | dict(num_layers=args.dit_layers)
    dit = VidGenTransformer3DModel(**config, in_channels=C, sample_size=(Fl, H, W))  # sized by the VAE
    t5 = T5EncoderModel(text_encoder_config(vocab_size, args.text_positions))
    params = list(dit.parameters()) + ([] if args.freeze_text_encoder else list(t5.parameters()))
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99))
    head = None  # the phrase loss's head: trained with the text encoder, not exported
    if args.text_grounding > 0:
        head = nn.Linear(t5.config.d_model, sum(len(v) for v in GROUNDING.values()))
        opt.add_param_group({"params": list(head.parameters())})
    ckpt = run / "dit_ckpt"
    start, tensors, opt_state = latest_checkpoint(ckpt)
    if args.init_from and tensors is None:  # a resumed run has its own weights
        init_from_pipeline(Path(args.init_from), dit, t5)
    if tensors is not None:
        dit.load_state_dict(split_state(tensors, "dit."))
        t5.load_state_dict(split_state(tensors, "t5."))
        if head is not None:
            head.load_state_dict(split_state(tensors, "head."))
        opt.load_state_dict(opt_state)
    # An exponential moving average of the weights smooths the noise of small batches; it starts from
    # the weights it resumes with (a run continued from a checkpoint without one starts it there).
    ema = EMAModel(params, decay=args.dit_ema, foreach=True) if args.dit_ema > 0 else None
    if ema is not None and tensors is not None and "ema_step" in tensors:
        ema.shadow_params = [tensors[f"ema.{i}"].clone() for i in range(len(params))]
        ema.optimization_step = int(tensors["ema_step"])
    probe = None  # the binding loss reads the cross-attention of these blocks
    if args.attention_grounding > 0:
        blocks = (
            range(args.dit_layers) if args.attention_blocks == "all" else args.attention_blocks.split(",")
        )
        probe = CrossAttentionProbe(dit, [int(b) for b in blocks])
        object_of_token = token_objects(run, cache, vae)  # (n, N)
    grounded, object_of_word = caption_phrases(tokens)  # (n, L, 3), (n, L): one pass over the captions
    if args.freeze_text_encoder:  # a fixed function of the caption: no dropout, no gradients
        t5.requires_grad_(False).eval()
    dit, t5, opt = accelerator.prepare(dit, t5, opt)
    if head is not None:
        head = accelerator.prepare(head)
    empty = tokens[0].clone()
    empty[:] = 0
    empty[0] = 1  # "" -> just </s>
    mu = VidGenFlowMatchScheduler(**LTX_SCHEDULER_CONFIG).shift_for_tokens(Fl * H * W)  # sampling's shift
    draw = clip_weights(tokens, args.two_object_share)
    tic = time.time()
    for step in range(start, args.dit_steps):
        # Data order and noise are functions of (seed, step): resuming reproduces them exactly.
        g = torch.Generator().manual_seed(args.seed * 7_000_003 + step)
        if draw is None:
            idx = torch.randint(0, n, (args.dit_batch,), generator=g)
        else:
            idx = torch.multinomial(draw, args.dit_batch, replacement=True, generator=g)
        x0 = latents[idx]  # (B, C, F, H, W)
        ids = tokens[idx].clone()
        dropped = torch.rand(len(ids), generator=g) < 0.1
        ids[dropped] = empty  # caption dropout for CFG
        mask = torch.stack(
            [sample_default_training_mask((Fl, H, W), g, args.t2v_share) for _ in idx]
        )  # (B, F, H, W)
        u = noise_draws(len(idx), g, args.logit_normal_share, args.logit_mean)  # (B,) in (0, 1)
        sigma = math.exp(mu) / (math.exp(mu) + (1 / u - 1))  # (B,) shifted like the sampler
        noise = torch.randn(x0.shape, generator=g)
        s = sigma.view(-1, 1, 1, 1, 1)
        m = mask[:, None]
        xt = m * ((1 - s) * x0 + s * noise) + (1 - m) * x0  # given tokens stay clean
        t_tok = (sigma[:, None] * 1000) * mask.flatten(1)  # (B, N): 0 on given tokens
        weight = (1 + args.object_weight * objects[idx].float()) * mask  # (B, F, H, W)
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, args.dit_steps, args.lr)
        dev = accelerator.device
        text = t5(ids.to(dev))[0]
        v = dit(pack(xt).to(dev), text, t_tok.to(dev), None, Fl, H, W).sample  # (B, N, C)
        target = pack(noise - x0).to(dev)
        w = weight.flatten(1)[..., None].to(dev)
        loss = (w * (v - target) ** 2).sum() / (w.sum() * C)
        loss_total, row = loss, {}
        if head is not None:
            targets = grounded[idx].masked_fill(dropped[:, None, None], -100)  # (B, L, 3)
            ground = grounding_loss(head, text, targets.to(dev))
            loss_total, row = loss + args.text_grounding * ground, {"grounding": ground.item()}
        if probe is not None:
            words, owner = binding_targets(object_of_word[idx], object_of_token[idx], dropped)
            clean = 1 - t_tok / 1000  # (B, N): the noisier a token, the less it can know its object
            bind = binding_loss(probe.maps(), words.to(dev), owner.to(dev), clean.to(dev))
            loss_total, row = loss_total + args.attention_grounding * bind, row | {"binding": bind.item()}
        opt.zero_grad()
        accelerator.backward(loss_total)
        accelerator.clip_grad_norm_(params, 1.0)
        opt.step()
        if ema is not None:
            ema.step(params)
        if step % 25 == 0 or step == args.dit_steps - 1:
            row = {"step": step, "loss": loss.item(), **row, "seconds": time.time() - tic}
            log(run, "dit_log", row)
            print("dit " + " ".join(f"{k} {v:.4g}" for k, v in row.items()), flush=True)
        if (step + 1) % args.checkpoint_every == 0:
            state = {f"dit.{k}": v for k, v in accelerator.unwrap_model(dit).state_dict().items()}
            state |= {f"t5.{k}": v for k, v in accelerator.unwrap_model(t5).state_dict().items()}
            if head is not None:
                state |= {f"head.{k}": v for k, v in accelerator.unwrap_model(head).state_dict().items()}
            if ema is not None:
                state |= {f"ema.{i}": p for i, p in enumerate(ema.shadow_params)}
                state["ema_step"] = torch.tensor(ema.optimization_step)
            save_checkpoint(ckpt, step + 1, state, opt)
    dit, t5 = accelerator.unwrap_model(dit).eval(), accelerator.unwrap_model(t5).eval()
    if ema is not None:
        ema.copy_to(params)  # the averaged weights are the ones exported
    dit.save_pretrained(final / "transformer")
    t5.save_pretrained(final / "text_encoder")
    return dit, t5


# --------------------------------------------------------------------------------------------------
def main():
    args = parse_args()
    run = Path(args.out)
    run.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    tokenizer = word_tokenizer(max_length=MAX_TOKENS)

    if args.init_from and not (run / "vae" / "config.json").exists():
        shutil.copytree(Path(args.init_from) / "vae", run / "vae")  # its DiT was trained in this latent space
    vae = train_vae(args, run, accelerator)  # 1. the VAE
    if args.stop_after == "vae":
        return
    cache = build_cache(args, run, vae, tokenizer)  # 2. latents, once
    if args.stop_after == "cache":
        return
    dit, t5 = train_dit(args, run, accelerator, cache, len(tokenizer), vae)  # 3. DiT + text encoder

    if args.export:  # 4. the pipeline folder
        dit.register_to_config(sample_frame_rate=float(shapes.FPS))
        pipe = VidGenPipeline(
            vae=vae, text_encoder=t5, tokenizer=tokenizer, transformer=dit,
            scheduler=VidGenFlowMatchScheduler(**LTX_SCHEDULER_CONFIG),
        )  # fmt: skip
        save_pipeline(pipe, Path(args.export))
        print(f"exported {args.export}")


if __name__ == "__main__":
    main()
