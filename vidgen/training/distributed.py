"""Data parallelism for models called outside their DDP wrapper."""

from __future__ import annotations


def average_gradients(accelerator, parameters) -> None:
    """Replace every gradient by its mean over the processes.

    For models a recipe calls directly rather than through ``accelerator.prepare``'s DDP wrapper: a
    rollout runs the model several times before one backward (which DDP does not allow), and a VAE
    trains through its ``encode`` and ``decode`` methods (which DDP's ``forward`` does not see).
    Call it between ``accelerator.backward`` and the optimizer step. One process: nothing to do."""
    if accelerator.num_processes == 1:
        return
    for p in parameters:
        if p.grad is not None:
            p.grad = accelerator.reduce(p.grad.contiguous(), reduction="mean")
