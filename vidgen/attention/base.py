"""What every attention kind shares: the runtime state it reads (token grid, timestep, denoising step)
and the transformer hooks that fill it, for vidgen's DiT and for stock diffusers video transformers."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
from dataclasses import dataclass

import torch

from ..models.attention import attention

# Which rows of the transformer's batch carry the prompt (False: the unconditional half of a
# classifier-free-guidance batch). vidgen's pipelines set it; unset means "every row".
_CONDITIONAL_ROWS: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar(
    "vidgen_conditional_rows", default=None
)


@contextlib.contextmanager
def conditional_rows(rows: torch.Tensor | None):
    """Tell installed attention kinds which batch rows are conditional (a ``(B,)`` bool tensor)."""
    token = _CONDITIONAL_ROWS.set(rows)
    try:
        yield
    finally:
        _CONDITIONAL_ROWS.reset(token)


@dataclass
class KindState:
    """Filled by the transformer's forward pre-hook before every call."""

    grid: tuple[int, int, int] | None = None  # latent token grid (F, H, W)
    timestep: float = 1000.0  # the largest timestep of the call, on the [0, 1000] scale
    step: int = -1  # denoising step: counts timestep changes; restarts when the timestep goes up
    call: int = 0  # index of this call within its step (separate conditional / unconditional calls)
    batch: int = 0  # rows of the caller's batch (before any duplication)
    context: str | None = None  # diffusers' cache_context name of the call ("cond", "uncond", ...), if any


class AttentionKind:
    """An attention kind: self-attention replaced, cross-attention optionally post-processed.

    ``self_attention(q, k, v, layer, dense)`` takes ``(B, N, H, D)`` queries, keys and values after RoPE
    and returns ``(B, N, H, D)``; ``dense(q, k, v)`` is the layer's own dense attention (its backend).
    ``after_cross_attention(out, layer)`` may rewrite the text cross-attention output ``(B, N, D)``. Subclasses may also rewrite the transformer's inputs and
    output around each call (``adjust_inputs`` / ``adjust_output``).
    """

    overrides_cross_attention = False

    def __init__(self):
        self.state = KindState()

    # -- hooks -----------------------------------------------------------------------------------
    def pre_forward(self, transformer, args, kwargs):
        if torch.is_grad_enabled() and getattr(transformer, "gradient_checkpointing", False):
            raise ValueError(
                "attention kinds are for inference: disable gradient checkpointing (their per-call state "
                "would differ when the forward is recomputed)"
            )
        bound = _forward_signature(type(transformer)).bind(transformer, *args, **kwargs)
        values = bound.arguments
        hidden = values["hidden_states"]
        self.state.grid = _token_grid(transformer, hidden, values)
        t = values.get("timestep")
        t = float(t.max()) if isinstance(t, torch.Tensor) else float(t if t is not None else 1000.0)
        if t > self.state.timestep or self.state.step < 0:
            self.state.step, self.state.call = 0, 0
        elif t != self.state.timestep:
            self.state.step, self.state.call = self.state.step + 1, 0
        else:
            self.state.call += 1
        self.state.timestep = t
        self.state.batch = hidden.shape[0]
        if self.adjust_inputs(values):
            return bound.args[1:], bound.kwargs  # without self
        return None

    def post_forward(self, transformer, args, kwargs, output):
        return self.adjust_output(output)

    def adjust_inputs(self, values: dict) -> bool:
        """Rewrite the bound forward arguments in place; return True if anything changed."""
        return False

    def adjust_output(self, output):
        return output

    # -- attention -------------------------------------------------------------------------------
    def self_attention(self, q, k, v, layer: int, dense=attention) -> torch.Tensor:
        return dense(q, k, v)

    def after_cross_attention(self, out: torch.Tensor, layer: int) -> torch.Tensor:
        return out


@functools.cache
def _forward_signature(cls) -> inspect.Signature:
    """The signature of ``cls.forward`` (with ``self``), looked up once per class, not per call."""
    return inspect.signature(cls.forward)


def _token_grid(transformer, hidden: torch.Tensor, values: dict) -> tuple[int, int, int]:
    """The latent token grid ``(F, H, W)`` of one forward call."""
    cfg = transformer.config
    if hidden.ndim == 5:  # Wan: (B, C, F, H, W) before patchify
        pt, ph, pw = cfg.patch_size
        return hidden.shape[2] // pt, hidden.shape[3] // ph, hidden.shape[4] // pw
    # vidgen and LTX-Video: packed tokens, the grid comes as keyword arguments (latent sizes).
    pt, p = getattr(cfg, "patch_size_t", 1), getattr(cfg, "patch_size", 1)
    try:
        return values["num_frames"] // pt, values["height"] // p, values["width"] // p
    except (KeyError, TypeError):
        raise ValueError(
            "sparse attention needs the latent grid: call the transformer with num_frames=, height=, width="
        ) from None
