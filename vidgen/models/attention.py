"""The single attention dispatch point of vidgen.

Every attention call in vidgen's models goes through :func:`attention`. A backend is one small
function registered under a name; a model picks its backend once with
``model.set_attention_backend(name)`` and never switches inside the denoising loop.

Layout everywhere: ``q, k, v`` are ``(B, N, H, D)`` (batch, tokens, heads, head dim), and ``mask``
is a boolean tensor broadcastable to ``(B, H, Nq, Nk)`` where ``True`` means "may attend", ``None``
for full attention, or a :class:`~vidgen.models.block_sparse.BlockSparsePattern` (the sparse kinds:
DraftAttention, FreeSwim windows), which goes to a block-sparse kernel instead of a dense backend.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .block_sparse import BlockSparsePattern, sparse_attention

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]

_BACKENDS: dict[str, AttentionFn] = {}
_AVAILABILITY: dict[str, Callable[[], str | None]] = {}


def register_attention_backend(name: str, check: Callable[[], str | None] | None = None):
    """Register ``fn(q, k, v, mask) -> out`` under ``name``.

    ``check`` returns ``None`` when the backend can run here, else a message saying what is missing.
    """

    def decorator(fn: AttentionFn) -> AttentionFn:
        _BACKENDS[name] = fn
        _AVAILABILITY[name] = check or (lambda: None)
        return fn

    return decorator


def available_attention_backends() -> list[str]:
    return sorted(_BACKENDS)


def check_attention_backend(name: str) -> str:
    """Validate a backend name; raise a ``ValueError`` that says what to do if it cannot run."""
    if name not in _BACKENDS:
        raise ValueError(f"attention backend must be one of {available_attention_backends()}; got {name!r}")
    problem = _AVAILABILITY[name]()
    if problem is not None:
        raise ValueError(problem)
    return name


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None, backend: str = "sdpa"
) -> torch.Tensor:
    """Scaled dot-product attention through the named backend. ``(B, N, H, D) -> (B, N, H, D)``."""
    if isinstance(mask, BlockSparsePattern):
        return sparse_attention(q, k, v, mask)
    return _BACKENDS[backend](q, k, v, mask)


@register_attention_backend("sdpa")
def _sdpa(q, k, v, mask):
    # SDPA wants (B, H, N, D).
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask
    )
    return out.transpose(1, 2)


def _xformers_missing() -> str | None:
    if importlib.util.find_spec("xformers") is None:
        return (
            "attention backend 'xformers' needs the optional xformers package: "
            "install it with `pip install 'vidgen[xformers]'`, or use backend 'sdpa'"
        )
    return None


@register_attention_backend("xformers", check=_xformers_missing)
def _xformers(q, k, v, mask):
    import xformers.ops as xops

    bias = None
    if mask is not None:
        B, Nq, H, _ = q.shape
        Nk = k.shape[1]
        bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, float("-inf"))
        bias = bias.expand(B, H, Nq, Nk)
    return xops.memory_efficient_attention(q, k, v, attn_bias=bias)


def _flex_missing() -> str | None:
    if importlib.util.find_spec("torch.nn.attention.flex_attention") is None:
        return "attention backend 'flex' needs torch >= 2.5 (torch.nn.attention.flex_attention)"
    return None


@register_attention_backend("flex", check=_flex_missing)
def _flex(q, k, v, mask):
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # (B, H, N, D)
    if mask is None or isinstance(mask, BlockMask):
        out = flex_attention(q, k, v, block_mask=mask)
    else:
        # A dense boolean mask becomes a score_mod; sparse kinds pass a BlockMask instead.
        dense = mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])

        def score_mod(score, b, h, q_idx, kv_idx):
            return torch.where(dense[b, h, q_idx, kv_idx], score, -float("inf"))

        out = flex_attention(q, k, v, score_mod=score_mod)
    return out.transpose(1, 2)
