"""Self-Forcing++: keep the causal student on track far beyond the teacher's horizon.

    python scripts/train_self_forcing_pp.py --student runs/self_forcing/transformer_causal --out runs/sfpp
    accelerate launch scripts/train_self_forcing_pp.py ...   # same recipe, any device; resumable

Self-Forcing trains on rollouts as long as the teacher's clips, so past that length the student meets
states it never learned to recover from (drift, frozen motion, lost objects). Self-Forcing++ (whose code
is not released; this follows the paper's description) rolls the student out far past the horizon
with the rolling KV cache it uses at inference, and lets the short-horizon teacher correct windows of
that rollout. Per generator update:

1. long rollout, without gradients: ``L`` latent frames (uniform up to ``--rollout-frames``), the
   student's own few-step sampling with a rolling cache of ``--kv-cache-frames``;
2. a window of the teacher's horizon ``[s - 1, s - 1 + F)`` with ``s`` a random chunk start: its first
   latent frame is context (given, clean), the rest, whole chunks, is regenerated from the cache as it
   stood at ``s``, starting from the student's own frames noised to a random few-step level (backward
   noise initialisation), with gradients through that one step;
3. DMD on the window: the teacher sees it at positions ``0 .. F-1`` with the first frame given (its
   prediction task), the critic likewise; the loss covers the regenerated frames only;
4. the critic learns from ``--critic-ratio`` random windows of the same rollout.

Design choice: the window's first frame is given to the teacher rather than scored, because the
teacher only ever saw the video's first latent frame (one pixel frame) at position 0; a mid-video
latent frame (four pixel frames) is fine as context but not as a frame to generate there. The
windows therefore need ``F - 1`` to be whole chunks (chunk sizes 1, 2 or 4 with a 5-frame horizon).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from vidgen.training.self_forcing import Distillation, critic_loss, dmd_loss, rollout, training_captions


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="run folder (checkpoints, logs, the student)")
    p.add_argument("--student", required=True, help="causal transformer folder (from train_self_forcing.py)")
    p.add_argument(
        "--rollout-frames", type=int, default=41, help="longest rollout, latent frames (41: 161 frames)"
    )
    p.add_argument(
        "--kv-cache-frames", type=int, default=None, help="rolling cache (default: horizon - chunk)"
    )
    Distillation.add_arguments(p)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    run = Path(args.out)
    run.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    d = Distillation(args, run, accelerator)  # teacher, student, critic, optimizers, EMA, resume
    C, (F, H, W) = d.teacher.config.in_channels, d.grid
    student = accelerator.unwrap_model(d.student)
    chunk = student.config.causal_chunk_size
    window = args.kv_cache_frames or max(chunk, F - chunk)
    last = len(d.sigmas) - 1
    if args.rollout_frames < F + chunk:
        raise ValueError(
            f"--rollout-frames must exceed the teacher's {F} latent frames; got {args.rollout_frames}"
        )

    tic = time.time()
    for step in range(d.start, args.critic_warmup + args.steps):
        shared = torch.Generator().manual_seed(step)  # same on every process: lengths, windows and levels
        L = int(torch.randint(F + chunk, args.rollout_frames + 1, (1,), generator=shared))
        bounds = set(student.chunk_starts(L + 1))  # chunk starts, and L + 1
        regen = [b for b in sorted(bounds) if 1 <= b and b - 1 + F <= L and b - 1 + F in bounds | {L}]
        if not regen:
            raise ValueError(
                f"no window of {F} frames has F - 1 whole chunks of {chunk}; choose another chunk size"
            )
        picks = torch.randint(0, len(regen), (args.critic_ratio + 1,), generator=shared).tolist()
        exit_step = int(torch.randint(0, len(d.sigmas), (1,), generator=shared))
        g = torch.Generator().manual_seed(args.seed * 7_000_003 + step * 1009 + accelerator.process_index)
        rng = np.random.default_rng([args.seed, step, accelerator.process_index])
        captions = training_captions(rng, args.batch, args.two_object_share)
        text, uncond = d.text(captions)
        noise = torch.randn((args.batch, C, L, H, W), generator=g).to(accelerator.device)

        # 1. Long rollout with the rolling cache; keep the cache as it stood at the window's first chunk.
        s = regen[picks[0]]
        with torch.no_grad():
            head, cache = rollout(
                d.student, noise[:, :, :s], text, d.sigmas, [last] * L, g, window, grad=False
            )
            at_window = cache.snapshot()
            tail, _ = rollout(
                d.student, noise[:, :, s:], text, d.sigmas, [last] * L, g, cache=cache, frame_offset=s,
                grad=False,
            )  # fmt: skip
        video = torch.cat([head, tail], dim=2)  # (B, C, L, H, W): the student's own long video

        # 2-3. Regenerate the window from backward-noised own frames, one gradient step per chunk; DMD.
        stats = dict(d.NO_DMD)
        if not d.warming_up(step):
            own = video[:, :, s : s - 1 + F]
            regenerated, _ = rollout(
                d.student, torch.randn(own.shape, generator=g).to(own), text, d.sigmas, [exit_step] * F, g,
                cache=at_window, frame_offset=s, init=own,
            )  # fmt: skip
            x = torch.cat([video[:, :, s - 1 : s], regenerated], dim=2)  # (B, C, F, H, W), first frame given
            loss_g, stats = dmd_loss(
                x, d.teacher, d.critic, text, uncond, args.guidance, d.sample_sigma, g, 1
            )
            stats = d.update_student(step, loss_g, stats, g)  # (+ the init's regression), EMA

        # 4. Critic: flow matching on other windows of the same rollout.
        for pick in picks[1:]:
            start = regen[pick] - 1
            loss_c = critic_loss(d.critic, video[:, :, start : start + F], text, d.sample_sigma, g, 1)
            d.update("critic", loss_c)

        row = {
            "step": step,
            "frames": L,
            "window": s - 1,
            "dmd": stats.pop("dmd"),
            "critic": loss_c.item(),
            **stats,
        }
        row["seconds"] = time.time() - tic
        d.end_step(step, row)  # log, print, checkpoint

    d.export()


if __name__ == "__main__":
    main()
