"""Turbo2K distillation across latent spaces: a smaller student DiT in a compressed latent space, taught by
the default model's DiT in its own latent space through feature alignment.

    python scripts/train_default.py --out runs/vae16 --vae-preset shapes-compressed --stop-after vae
    python scripts/distill_turbo2k.py --out runs/turbo2k --student-vae runs/vae16/vae
    python scripts/distill_turbo2k.py --out runs/turbo2k_plain --student-vae runs/vae16/vae --align-weight 0
    accelerate launch scripts/distill_turbo2k.py ...   # same recipe, any device
    vidgen eval --model runs/turbo2k/pipeline

``--align-weight 0`` trains the same student on the same data, steps and seeds without the teacher: the
baseline that shows what distillation adds. Design decisions (the paper has no code):

- Same video, same noise level: each clip is encoded by both VAEs, both latents are noised at the same
  sigma (sigma, not step index, since the two token counts shift the schedules differently), and the
  student's VDT mask is upsampled to the teacher's grid, so both see the same task.
- Alignment: negative cosine similarity between the teacher's block ``--teacher-block`` output,
  average-pooled onto the student's token grid, and an MLP projection of the student's block
  ``--student-block`` output (``vidgen.models.turbo2k``). The teacher runs without gradients and only
  up to its aligned block (the blocks above it never reach the loss).
- The student reads the teacher's text encoder, frozen: both students then start with the same
  language, and the comparison isolates the feature alignment.
- ``--student-from-teacher 0,2,4,6`` (not in the paper, whose student and teacher are different
  architectures): the student takes the teacher's width and a copy of the listed blocks, caption
  projection and timestep embedding; only its input and output projections, which face the other
  latent space, start new. Positions are grid indices, so a copied block sees neighbours twice as far
  apart in pixels; training adapts it. It is still smaller (fewer blocks over 4x fewer tokens).
- ``--attention-grounding W`` (not in the paper): the default's binding loss on the student's text
  cross-attention (``vidgen.training.grounding.binding_loss``), each object's latent tokens on the
  student's grid drawn to their own phrase of the caption. The teacher learnt its two-object binding
  from this loss; feature alignment on pooled tokens may not carry it into a grid where an object is one
  or two tokens.

The student's folder records ``--guidance`` (default 1, off) as its ``default_guidance_scale``: sampled
at the teacher's 2, the students over-saturate (latent std 1.6 against 1.1 for encoded clips).

Steps: 1. latent cache (both VAEs; shards of 64 written atomically, a rerun skips existing ones);
2. student and projector; 3. training (resumable; data order and noise are functions of seed and
step); 4. export of a pipeline folder (compressed VAE, teacher's text encoder, student DiT).
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

from vidgen import DEFAULT_MODEL, VidGenPipeline, VidGenTransformer3DModel, VidGenVideoAutoencoder
from vidgen.data import shapes
from vidgen.masks import sample_default_training_mask
from vidgen.models.turbo2k import FeatureProjector, alignment_loss, pool_tokens
from vidgen.training.cache import module_fingerprint, sharded_cache
from vidgen.training.checkpoint import (
    append_csv,
    load_latest_checkpoint,
    prefixed,
    save_checkpoint,
    save_pipeline,
    unprefixed,
)
from vidgen.training.grounding import (
    CrossAttentionProbe,
    binding_loss,
    binding_targets,
    caption_phrases,
    token_owners,
)

SHARD = 64


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="run folder (cache, checkpoints, logs, the pipeline)")
    p.add_argument("--teacher", default=DEFAULT_MODEL, help="teacher pipeline folder")
    p.add_argument("--student-vae", required=True, help="the compressed VAE's folder")
    p.add_argument("--cache", default=None, help="latent cache folder (default: <out>/cache); share it")
    p.add_argument("--clips", type=int, default=8000)
    p.add_argument("--align-weight", type=float, default=0.5, help="lambda of the alignment loss; 0: none")
    p.add_argument("--teacher-block", type=int, default=2)
    p.add_argument("--student-block", type=int, default=1)
    p.add_argument("--projector-layers", type=int, default=2)
    p.add_argument("--student-layers", type=int, default=4)
    p.add_argument("--student-heads", type=int, default=2)
    p.add_argument("--student-head-dim", type=int, default=64)
    p.add_argument(
        "--student-from-teacher",
        default=None,
        help="comma-separated teacher blocks the student starts from (its width and depth follow; "
        "--student-layers/heads/head-dim are then ignored)",
    )
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=24)
    p.add_argument("--lr", type=float, default=7e-4)
    p.add_argument("--object-weight", type=float, default=8.0, help="loss weight of object tokens")
    p.add_argument(
        "--attention-grounding", type=float, default=0.0,
        help="weight of the binding loss on the student's text cross-attention (0: off)",
    )  # fmt: skip
    p.add_argument("--attention-blocks", default="all", help="the student blocks the binding loss reads")
    p.add_argument(
        "--guidance", type=float, default=1.0,
        help="the guidance scale the student's folder samples at by default (model_index.json): at the "
        "teacher's 2 the students over-saturate; 1 (off) drew the cleanest objects",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=100)
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------------------
# 1. The latent cache: every clip through both VAEs.
def normalized_latents(vae, x: torch.Tensor) -> torch.Tensor:
    z = vae.encode(x).latent_dist.mode()
    return (z - vae.latents_mean.view(1, -1, 1, 1, 1)) / vae.latents_std.view(1, -1, 1, 1, 1)


@torch.no_grad()
def build_cache(folder: Path, clips: int, teacher_vae, student_vae, tokenizer) -> dict:
    """Clips ``0 .. clips-1`` through both VAEs, in shards keyed by the VAEs' fingerprints (a cache built
    for other VAEs is refused rather than mixed in)."""

    def shard(start: int, end: int) -> dict:
        x, captions, masks = shapes.render_training_batch(np.arange(start, end))
        t, s = student_vae.temporal_compression_ratio, student_vae.spatial_compression_ratio
        return {
            "teacher": normalized_latents(teacher_vae, x),  # (b, C, F, H, W)
            "student": normalized_latents(student_vae, x),  # (b, C', F, H', W')
            "tokens": tokenizer(captions, padding="max_length", max_length=16, return_tensors="pt").input_ids,
            "objects": shapes.object_tokens(masks, t, s),  # (b, F, H', W') on the student's grid
        }

    key = {"teacher_vae": module_fingerprint(teacher_vae), "student_vae": module_fingerprint(student_vae)}
    return sharded_cache(folder, clips, SHARD, key, shard)


def pack(x: torch.Tensor) -> torch.Tensor:  # (B, C, F, H, W) -> (B, N, C)
    return x.flatten(2).transpose(1, 2)


# --------------------------------------------------------------------------------------------------
# 3. One training step's loss.
def distillation_loss(args, batch, student, projector, teacher, text_encoder, sigma_shift, g, probe=None):
    """Student flow matching on its latents plus ``align_weight`` x alignment to the teacher's features
    (plus ``attention_grounding`` x the binding loss when ``probe`` reads the student's cross-attention).
    Returns the total and its terms (detached, for the log)."""
    zs, zt, ids, objects = batch["student"], batch["teacher"], batch["tokens"], batch["objects"]
    grid_s, grid_t = tuple(zs.shape[2:]), tuple(zt.shape[2:])
    device = zs.device
    B = len(zs)
    # Caption dropout (10%) for classifier-free guidance, like the teacher's training.
    empty = torch.zeros_like(ids[0])
    empty[0] = 1  # "" -> just </s>
    dropped = (torch.rand(B, generator=g) < 0.1).to(device)  # (B,)
    ids = torch.where(dropped[:, None], empty, ids)
    with torch.no_grad():
        text = text_encoder(ids)[0]  # (B, T, D_text)

    # Same task, same noise level for both: the mask on the student's grid, upsampled to the teacher's.
    mask_s = torch.stack([sample_default_training_mask(grid_s, g) for _ in range(B)]).to(device)
    up = [t // s for t, s in zip(grid_t, grid_s)]  # whole factors (checked in main)
    mask_t = mask_s.repeat_interleave(up[0], 1).repeat_interleave(up[1], 2).repeat_interleave(up[2], 3)
    u = torch.rand(B, generator=g).clamp(1e-4, 1 - 1e-4)
    sigma = (math.exp(sigma_shift) / (math.exp(sigma_shift) + (1 / u - 1))).to(device)  # (B,)

    def noised(z, mask):
        s, m = sigma.view(-1, 1, 1, 1, 1), mask[:, None]
        noise = torch.randn(z.shape, generator=g).to(device)
        return m * ((1 - s) * z + s * noise) + (1 - m) * z, noise  # given tokens stay clean

    xs, noise_s = noised(zs, mask_s)
    out = student(
        pack(xs), text, sigma[:, None] * 1000 * mask_s.flatten(1), None, *grid_s, output_hidden_states=True
    )
    weight = ((1 + args.object_weight * objects.float()) * mask_s).flatten(1)[..., None]  # (B, N, 1)
    diffusion = (weight * (out.sample - pack(noise_s - zs)) ** 2).sum() / (weight.sum() * zs.shape[1])
    loss, row = diffusion, {"diffusion": diffusion.detach(), "align": torch.zeros(())}
    if probe is not None:
        words, owner = binding_targets(batch["words"], batch["owners"], dropped)  # (B, T), (B, N_s)
        clean = 1 - sigma[:, None] * mask_s.flatten(1)  # (B, N_s): noisier tokens know their object less
        bind = binding_loss(probe.maps(), words, owner, clean)
        loss, row = loss + args.attention_grounding * bind, row | {"binding": bind.detach()}
    if args.align_weight == 0:
        return loss, row

    xt, _ = noised(zt, mask_t)
    with torch.no_grad():
        t_tok = sigma[:, None] * 1000 * mask_t.flatten(1)  # (B, N_t): 0 on given tokens
        out_t = teacher(pack(xt), text, t_tok, None, *grid_t, output_hidden_states=True)
    f_tea = out_t.hidden_states[args.teacher_block]  # (B, N_t, D_t)
    f_tea = pool_tokens(f_tea, grid_t, grid_s)  # (B, N_s, D_t) on the student's grid
    align = alignment_loss(f_tea, projector(out.hidden_states[args.student_block]))
    return loss + args.align_weight * align, row | {"align": align.detach()}


def grounding_targets(cache: dict, tokenizer, student_vae) -> dict:
    """For ``--attention-grounding``: each caption word's phrase and each student token's object, for
    every cached clip (clip ``i`` is ``shapes.sample_clip(i)``, checked against the cached object tokens)."""
    words = caption_phrases(cache["tokens"], tokenizer)[1]  # (n, T)
    if not (words >= 0).any():
        raise ValueError("--attention-grounding needs Shapes captions its tokenizer spells word by word")
    t, s = student_vae.temporal_compression_ratio, student_vae.spatial_compression_ratio
    return {"words": words, "owners": token_owners(cache["objects"], t, s)}  # (n, T), (n, N_s)


# --------------------------------------------------------------------------------------------------
# 2. A student that starts from some of the teacher's blocks (--student-from-teacher).
def student_from_teacher(teacher, blocks: str, student_vae, grid_s) -> VidGenTransformer3DModel:
    """The teacher's architecture on the student's latents and grid, with ``blocks`` (e.g. "0,2,4,6")
    copied in order; every other weight but ``proj_in`` / ``proj_out`` copied too."""
    picked = [int(b) for b in blocks.split(",")]
    depth = len(teacher.transformer_blocks)
    if not picked or any(not 0 <= b < depth for b in picked):
        raise ValueError(f"--student-from-teacher must list blocks in [0, {depth}); got {blocks!r}")
    config = dict(teacher.config) | {
        "in_channels": student_vae.config.latent_channels,
        "out_channels": None,
        "num_layers": len(picked),
        "sample_size": grid_s,
    }
    student = VidGenTransformer3DModel.from_config(config)
    source = teacher.state_dict()
    state = {}
    for name in student.state_dict():
        if name.startswith(("proj_in.", "proj_out.")):
            continue  # these face the other latent space: new, as the constructor made them
        if name.startswith("transformer_blocks."):
            _, i, rest = name.split(".", 2)
            name_t = f"transformer_blocks.{picked[int(i)]}.{rest}"
        else:
            name_t = name
        state[name] = source[name_t]
    missing = student.load_state_dict(state, strict=False).missing_keys
    assert all(m.startswith(("proj_in.", "proj_out.")) for m in missing), missing
    return student


# --------------------------------------------------------------------------------------------------
def main(argv=None):
    args = parse_args(argv)
    run = Path(args.out)
    run.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    device = accelerator.device

    # 1. Teacher, the compressed VAE, and the cache of both latents.
    teacher_pipe = VidGenPipeline.from_pretrained(args.teacher)
    student_vae = VidGenVideoAutoencoder.from_pretrained(args.student_vae).eval()
    with accelerator.main_process_first():  # one process writes the cache, the others read it
        folder = Path(args.cache or run / "cache")
        cache = build_cache(folder, args.clips, teacher_pipe.vae, student_vae, teacher_pipe.tokenizer)
    grid_t, grid_s = tuple(cache["teacher"].shape[2:]), tuple(cache["student"].shape[2:])
    if grid_t[0] != grid_s[0] or grid_t[1] % grid_s[1] or grid_t[2] % grid_s[2]:
        raise ValueError(
            f"the student's latent grid {grid_s} must have the teacher's frames and divide its grid {grid_t} "
            "(the teacher's features are pooled onto it)"
        )
    teacher = teacher_pipe.transformer.to(device).eval().requires_grad_(False)
    depth = len(teacher.transformer_blocks)
    if not 0 <= args.teacher_block < depth:
        raise ValueError(f"--teacher-block must be in [0, {depth}); got {args.teacher_block}")
    text_encoder = teacher_pipe.text_encoder.to(device).eval().requires_grad_(False)

    # 2. Student DiT on the compressed grid, and the projector into the teacher's feature space.
    torch.manual_seed(args.seed)
    if args.student_from_teacher:
        student = student_from_teacher(teacher, args.student_from_teacher, student_vae, grid_s)
    else:
        student = VidGenTransformer3DModel(
            in_channels=student_vae.config.latent_channels,
            num_layers=args.student_layers,
            num_attention_heads=args.student_heads,
            attention_head_dim=args.student_head_dim,
            caption_channels=text_encoder.config.d_model,
            caption_positions=teacher.config.caption_positions,  # the teacher's architecture, from a seed
            block_layout="full",
            sample_size=grid_s,
            sample_frame_rate=teacher.config.sample_frame_rate,
        )
    student = student.to(device)
    # The teacher only up to its aligned block: the blocks above it never reach the loss.
    teacher.transformer_blocks = teacher.transformer_blocks[: args.teacher_block + 1]
    if not 0 <= args.student_block < student.config.num_layers:
        raise ValueError(
            f"--student-block must be in [0, {student.config.num_layers}); got {args.student_block}"
        )
    probe = None  # the binding loss reads the student's cross-attention
    if args.attention_grounding > 0:
        depth, blocks = student.config.num_layers, args.attention_blocks
        picked = list(range(depth)) if blocks == "all" else [int(b) for b in blocks.split(",")]
        if not all(0 <= b < depth for b in picked):
            raise ValueError(f"--attention-blocks must be 'all' or blocks in [0, {depth}); got {blocks!r}")
        probe = CrossAttentionProbe(student, picked)
        cache |= grounding_targets(cache, teacher_pipe.tokenizer, student_vae)
    modules = {"student": student}
    if args.align_weight > 0:  # no projector without alignment: the baseline is the student alone
        modules["projector"] = FeatureProjector(
            student.config.num_attention_heads * student.config.attention_head_dim,
            teacher.config.num_attention_heads * teacher.config.attention_head_dim,
            num_layers=args.projector_layers,
        ).to(device)
    params = [p for module in modules.values() for p in module.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99))
    lr_schedule = get_cosine_schedule_with_warmup(opt, 100, args.steps)
    optimizers = {"optimizer": opt, "lr_schedule": lr_schedule}
    start, tensors, state = load_latest_checkpoint(run / "checkpoints", optimizers, vars(args))
    if tensors is not None:
        for name, module in modules.items():
            module.load_state_dict(unprefixed(name, tensors))
    *prepared, opt = accelerator.prepare(*modules.values(), opt)
    modules = dict(zip(modules, prepared))  # called through their wrappers: gradients sync across processes
    # Training noise levels shifted like the student's sampling (its token count).
    sigma_shift = teacher_pipe.scheduler.shift_for_tokens(int(np.prod(grid_s)))

    # 3. Training.
    tic = time.time()
    n = len(cache["student"])
    for step in range(start, args.steps):
        g = torch.Generator().manual_seed(args.seed * 7_000_003 + step * 1009 + accelerator.process_index)
        idx = torch.randint(0, n, (args.batch,), generator=g)
        batch = {k: v[idx].to(device) for k, v in cache.items()}
        loss, row = distillation_loss(
            args, batch, modules["student"], modules.get("projector"), teacher, text_encoder, sigma_shift, g,
            probe,
        )  # fmt: skip
        opt.zero_grad()
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(params, 1.0)
        opt.step()
        lr_schedule.step()
        if (step % 25 == 0 or step == args.steps - 1) and accelerator.is_main_process:
            row = {k: v.item() for k, v in ({"loss": loss} | row).items()}
            append_csv(run / "distill_log.csv", {"step": step} | row | {"seconds": time.time() - tic})
            text = " ".join(f"{k} {v:.4f}" for k, v in row.items())
            print(f"step {step} {text} ({time.time() - tic:.0f}s)", flush=True)
        if (step + 1) % args.checkpoint_every == 0 and accelerator.is_main_process:
            tensors = {}
            for name, module in modules.items():
                tensors |= prefixed(name, accelerator.unwrap_model(module))
            save_checkpoint(run / "checkpoints", step + 1, tensors, optimizers, {"args": vars(args)})

    # 4. The student's pipeline folder.
    if accelerator.is_main_process:
        pipe = VidGenPipeline(
            vae=student_vae, text_encoder=teacher_pipe.text_encoder, tokenizer=teacher_pipe.tokenizer,
            transformer=accelerator.unwrap_model(modules["student"]).eval(), scheduler=teacher_pipe.scheduler,
            default_guidance_scale=args.guidance,
        )  # fmt: skip
        save_pipeline(pipe, run / "pipeline")
        print(f"wrote {run / 'pipeline'}")


if __name__ == "__main__":
    main()
