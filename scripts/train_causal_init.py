"""Initialise a causal, few-step student from the bidirectional default model by ODE-pair regression.

    python scripts/train_causal_init.py --out runs/causal_init              # resumable
    accelerate launch scripts/train_causal_init.py --out runs/causal_init   # same recipe, any device

Why ODE pairs rather than teacher forcing on data: the student must denoise a chunk in 4 steps, and
regression onto the teacher's deterministic ODE ends (noise at a few-step level -> the teacher's clean
video) teaches exactly that map, with the teacher's guidance built in; flow matching on data would
give a many-step model whose 4-step samples are blurred averages. The context is teacher-forced and
clean: chunk ``k`` sees the teacher's clean frames before it at timestep 0, which is what the
inference-time context pass writes into the KV cache (CausVid regresses with noisy context instead,
a mismatch Self-Forcing points out).

1. ODE pairs: the teacher's guided Euler ODE from noise, kept at the student's few-step levels
   (shards of 64, written atomically; a rerun skips the shards that exist).
2. Student: the teacher's weights in a block-causal transformer (``--chunk-size`` latent frames).
3. Regression: per step one chunk index ``k`` and one level ``i``; the input is the clean frames
   before chunk ``k`` followed by chunk ``k`` at level ``i``; the loss is the MSE between the student's
   clean prediction of chunk ``k`` and the teacher's.
4. Export: ``<out>/transformer_causal`` (load it with ``subfolder=...`` or copy it into a pipeline
   folder as ``transformer_causal``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from safetensors.torch import save_file

from vidgen import DEFAULT_MODEL, VidGenPipeline
from vidgen.pipelines.common import DEFAULT_GUIDANCE_SCALE
from vidgen.training.checkpoint import (
    append_csv,
    load_latest_checkpoint,
    save_checkpoint,
    save_model,
)
from vidgen.training.self_forcing import (
    causal_student,
    encode_text,
    load_pairs,
    regression_loss,
    teacher_trajectory,
    training_captions,
)

SHARD = 64


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="run folder (pairs, checkpoints, logs, the student)")
    p.add_argument(
        "--teacher", default=DEFAULT_MODEL, help="bidirectional pipeline folder (default: embedded)"
    )
    p.add_argument("--chunk-size", type=int, default=1, help="latent frames per causal chunk")
    p.add_argument(
        "--independent-first-frame", action="store_true", help="latent frame 0 is a chunk by itself"
    )
    p.add_argument("--few-steps", type=int, default=4, help="the student's denoising levels per chunk")
    p.add_argument("--pairs", type=int, default=1024, help="ODE pairs (rounded up to shards of 64)")
    p.add_argument(
        "--guidance",
        type=float,
        default=DEFAULT_GUIDANCE_SCALE,
        help="the teacher's guidance scale (default: the pipelines' default)",
    )
    p.add_argument("--substeps", type=int, default=8, help="teacher Euler steps between two levels")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def make_pairs(args, run: Path, pipe, sigmas, grid, device) -> dict:
    """Stage 1: ODE pairs in shards (resumable); returns them all, with their captions."""
    folder = run / "pairs"
    folder.mkdir(parents=True, exist_ok=True)
    uncond = encode_text(pipe, [""] * SHARD, device)
    C = pipe.transformer.config.in_channels
    for shard in range(math.ceil(args.pairs / SHARD)):
        path = folder / f"shard_{shard:05d}.safetensors"
        if path.exists():
            continue
        tic = time.time()
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + shard)
        captions = training_captions(np.random.default_rng([args.seed, shard]), SHARD)
        noise = torch.randn((SHARD, C, *grid), generator=g).to(device)
        states, clean = teacher_trajectory(
            pipe.transformer, noise, encode_text(pipe, captions, device), uncond, sigmas, args.guidance,
            args.substeps,
        )  # fmt: skip
        tmp = path.with_suffix(".tmp")
        save_file(
            {"states": states.cpu(), "clean": clean.cpu()}, tmp, metadata={"captions": json.dumps(captions)}
        )
        tmp.rename(path)
        print(f"pairs shard {shard} ({time.time() - tic:.0f}s)", flush=True)
    return load_pairs(folder)


def main(argv=None):
    args = parse_args(argv)
    run = Path(args.out)
    run.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    device = accelerator.device

    # 1. Teacher (frozen) and its ODE pairs at the few-step levels.
    pipe = VidGenPipeline.from_pretrained(args.teacher).to(device)
    pipe.transformer.requires_grad_(False).eval()
    pipe.text_encoder.requires_grad_(False).eval()
    grid = tuple(pipe.transformer.config.sample_size)  # the training horizon (F, H, W) in latent frames
    sigmas = pipe.scheduler.few_step_sigmas(args.few_steps, num_tokens=int(np.prod(grid))).tolist()
    pairs = make_pairs(args, run, pipe, sigmas, grid, device)

    # 2. The student: the teacher's weights, block-causal.
    student = causal_student(pipe.transformer, args.chunk_size, args.independent_first_frame)
    student = student.to(device).train()
    student.requires_grad_(True)
    opt = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.99))
    start, tensors, state = load_latest_checkpoint(run / "checkpoints", {"optimizer": opt}, vars(args))
    if tensors is not None:
        student.load_state_dict(tensors)
    student, opt = accelerator.prepare(student, opt)

    # 3. Regression onto the teacher's ODE ends, with clean teacher-forced context.
    tic = time.time()
    for step in range(start, args.steps):
        g = torch.Generator().manual_seed(args.seed * 7_000_003 + step * 1009 + accelerator.process_index)
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / 50)
        loss = regression_loss(student, pairs, pipe, sigmas, g, args.batch, device)  # through DDP: synced
        opt.zero_grad()
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        if step % 25 == 0 or step == args.steps - 1:
            append_csv(
                run / "init_log.csv", {"step": step, "loss": loss.item(), "seconds": time.time() - tic}
            )
            print(f"init step {step} loss {loss.item():.5f} ({time.time() - tic:.0f}s)", flush=True)
        if (step + 1) % args.checkpoint_every == 0 and accelerator.is_main_process:
            save_checkpoint(
                run / "checkpoints",
                step + 1,
                accelerator.unwrap_model(student).state_dict(),
                {"optimizer": opt},
                {"args": vars(args)},
            )

    # 4. Export the student.
    if accelerator.is_main_process:
        save_model(accelerator.unwrap_model(student).eval(), run / "transformer_causal")
        print(f"wrote {run / 'transformer_causal'}")


if __name__ == "__main__":
    main()
