"""Self-Forcing: train the causal student on its own rollouts with distribution matching distillation.

    python scripts/train_self_forcing.py --student runs/causal_init/transformer_causal --out runs/self_forcing
    accelerate launch scripts/train_self_forcing.py ...   # same recipe, any device; resumable

The student generates exactly as at inference (chunk by chunk, few steps, its own KV cache), so
training sees its own errors instead of ground-truth context (exposure bias). Per generator update:

1. rollout: the teacher's horizon (17 frames) from noise, chunk by chunk; every chunk exits at the same
   random few-step level, and only that step's clean prediction carries gradients (stochastic gradient
   truncation); the KV cache is written by gradient-free context passes;
2. DMD: the rollout is noised to a random level; the bidirectional teacher with guidance is the real
   score, the critic the fake score; the student is pulled along ``fake - real``;
3. the critic, a copy of the teacher, learns the student's distribution by flow matching on fresh
   gradient-free rollouts, ``--critic-ratio`` updates per generator update (Self-Forcing: 5).

The EMA of the student is exported as ``<out>/transformer_causal``.
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
    p.add_argument("--student", required=True, help="causal transformer folder (from train_causal_init.py)")
    Distillation.add_arguments(p)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    run = Path(args.out)
    run.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    d = Distillation(args, run, accelerator)  # teacher, student, critic, optimizers, EMA, resume
    C, (F, H, W) = d.teacher.config.in_channels, d.grid
    chunks = len(accelerator.unwrap_model(d.student).chunk_starts(F)) - 1

    def generate(g, grad: bool, exit_step: int):
        """Captions and a rollout of the teacher's horizon."""
        rng = np.random.default_rng([args.seed, int(torch.randint(1 << 30, (1,), generator=g))])
        captions = training_captions(rng, args.batch, args.two_object_share)
        text, uncond = d.text(captions)
        noise = torch.randn((args.batch, C, F, H, W), generator=g).to(accelerator.device)
        x, _ = rollout(d.student, noise, text, d.sigmas, [exit_step] * chunks, g, grad=grad)
        return x, text, uncond

    tic = time.time()
    for step in range(d.start, args.critic_warmup + args.steps):
        # The exit level is shared by all chunks and all processes (seeded by the step only).
        exits = torch.randint(
            0, len(d.sigmas), (args.critic_ratio + 1,), generator=torch.Generator().manual_seed(step)
        )
        g = torch.Generator().manual_seed(args.seed * 7_000_003 + step * 1009 + accelerator.process_index)

        # 1-2. Generator: own rollout with one gradient step per chunk, DMD against teacher and critic.
        stats = dict(d.NO_DMD)
        if not d.warming_up(step):
            x, text, uncond = generate(g, grad=True, exit_step=int(exits[0]))
            loss_g, stats = dmd_loss(x, d.teacher, d.critic, text, uncond, args.guidance, d.sample_sigma, g)
            stats = d.update_student(step, loss_g, stats, g)  # (+ the init's regression), EMA

        # 3. Critic: flow matching on fresh gradient-free rollouts.
        for r in range(args.critic_ratio):
            with torch.no_grad():
                x, text, _ = generate(g, grad=False, exit_step=int(exits[r + 1]))
            loss_c = critic_loss(d.critic, x, text, d.sample_sigma, g)
            d.update("critic", loss_c)

        row = {
            "step": step,
            "dmd": stats.pop("dmd"),
            "critic": loss_c.item(),
            **stats,
            "seconds": time.time() - tic,
        }
        d.end_step(step, row)  # log, print, checkpoint

    d.export()


if __name__ == "__main__":
    main()
