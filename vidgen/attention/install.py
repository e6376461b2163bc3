"""Installing attention kinds on vidgen's DiT and on stock diffusers video transformers, and removing them.

- ``VidGenTransformer3DModel``: each attention module has a ``kind`` slot that its block consults.
- ``LTXVideoTransformer3DModel`` / ``WanTransformer3DModel``: subclasses of the models' own attention
  processors (so ``set_attention_backend`` still reaches them) replace self-attention and post-process
  cross-attention; the original processors are kept and put back by :func:`reset_attention`.

A forward pre-hook on the transformer captures the latent grid and the timestep for the kind (the
diffusers models do not pass the grid down to their processors); a forward hook undoes any batch
rewriting the kind did (FreeSwim's dual path).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from functools import partial

import torch
from diffusers import LTXVideoTransformer3DModel, WanTransformer3DModel
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_ltx import LTXVideoAttnProcessor
from diffusers.models.transformers.transformer_ltx import apply_rotary_emb as ltx_rotary
from diffusers.models.transformers.transformer_wan import WanAttnProcessor, _get_qkv_projections

from ..models.transformer import VidGenTransformer3DModel
from .base import AttentionKind
from .draft import DraftAttention, DraftAttentionConfig
from .freeswim import FreeSwim, FreeSwimConfig

SUPPORTED = (VidGenTransformer3DModel, LTXVideoTransformer3DModel, WanTransformer3DModel)


@dataclass
class _Installed:
    kind: AttentionKind
    hooks: list = field(default_factory=list)
    processors: dict | None = None  # the diffusers model's original processors
    cache_context: object | None = None  # the wrapper of the model's cache_context, removed on reset


def _wan_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's interleaved rotary embedding on ``(B, N, H, D)``: pairs (2i, 2i+1) rotate together."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[..., 0::2], sin[..., 1::2]
    return torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1).flatten(-2).type_as(x)


class LTXKindProcessor(LTXVideoAttnProcessor):
    """LTX-Video attention with an attention kind in self-attention (and after cross-attention)."""

    def __init__(self, kind: AttentionKind, layer: int):
        super().__init__()
        self.kind, self.layer = kind, layer

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None
    ):
        if encoder_hidden_states is not None:  # cross-attention: stock, then the kind's override
            out = super().__call__(
                attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb
            )
            return self.kind.after_cross_attention(out, self.layer)
        if attention_mask is not None:
            raise ValueError("sparse self-attention does not take an attention_mask")
        q, k = attn.norm_q(attn.to_q(hidden_states)), attn.norm_k(attn.to_k(hidden_states))
        v = attn.to_v(hidden_states)
        if image_rotary_emb is not None:
            q, k = ltx_rotary(q, image_rotary_emb), ltx_rotary(k, image_rotary_emb)
        q, k, v = (x.unflatten(2, (attn.heads, -1)) for x in (q, k, v))  # (B, N, H, D)
        out = (
            self.kind.self_attention(
                q, k, v, self.layer, partial(dispatch_attention_fn, backend=self._attention_backend)
            )
            .flatten(2, 3)
            .to(q.dtype)
        )
        return attn.to_out[1](attn.to_out[0](out))


class WanKindProcessor(WanAttnProcessor):
    """Wan attention with an attention kind in self-attention (and after cross-attention)."""

    def __init__(self, kind: AttentionKind, layer: int):
        super().__init__()
        self.kind, self.layer = kind, layer

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if encoder_hidden_states is not None:
            out = super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
            return self.kind.after_cross_attention(out, self.layer)
        if attention_mask is not None:
            raise ValueError("sparse self-attention does not take an attention_mask")
        q, k, v = _get_qkv_projections(attn, hidden_states, None)
        q, k = attn.norm_q(q), attn.norm_k(k)
        q, k, v = (x.unflatten(2, (attn.heads, -1)) for x in (q, k, v))  # (B, N, H, D)
        if rotary_emb is not None:
            q, k = _wan_rotary(q, *rotary_emb), _wan_rotary(k, *rotary_emb)
        out = (
            self.kind.self_attention(
                q, k, v, self.layer, partial(dispatch_attention_fn, backend=self._attention_backend)
            )
            .flatten(2, 3)
            .type_as(q)
        )
        return attn.to_out[1](attn.to_out[0](out))


def _install(transformer, kind: AttentionKind) -> None:
    if not isinstance(transformer, SUPPORTED):
        names = ", ".join(c.__name__ for c in SUPPORTED)
        raise ValueError(f"transformer must be one of {names}; got {type(transformer).__name__}")
    reset_attention(transformer)
    installed = _Installed(kind)
    if isinstance(transformer, VidGenTransformer3DModel):
        cfg = transformer.config
        if cfg.block_layout != "full" or cfg.causal_chunk_size is not None:
            raise ValueError(
                "sparse attention kinds need block_layout='full' and causal_chunk_size=None; got "
                f"block_layout={cfg.block_layout!r}, causal_chunk_size={cfg.causal_chunk_size}"
            )
        for block in transformer.transformer_blocks:
            block.attn1.kind = kind
            block.attn2.kind = kind if kind.overrides_cross_attention else None
    else:
        installed.processors = dict(transformer.attn_processors)
        if any(getattr(p, "_parallel_config", None) is not None for p in installed.processors.values()):
            raise ValueError("attention kinds do not support context parallelism (each rank holds a shard)")
        cls = LTXKindProcessor if isinstance(transformer, LTXVideoTransformer3DModel) else WanKindProcessor
        new = {}
        for name, proc in installed.processors.items():
            layer = int(name.split(".")[1])  # transformer_blocks.{i}.attn1.processor / blocks.{i}.attn2...
            is_cross = ".attn2." in name
            new[name] = cls(kind, layer) if (not is_cross or kind.overrides_cross_attention) else proc
        transformer.set_attn_processor(new)
        # diffusers' pipelines name their calls ("cond", "uncond", "cond_uncond") with cache_context.
        if hasattr(transformer, "cache_context"):
            installed.cache_context = _record_cache_context(transformer, kind)
    installed.hooks = [
        transformer.register_forward_pre_hook(lambda m, a, kw: kind.pre_forward(m, a, kw), with_kwargs=True),
        transformer.register_forward_hook(
            lambda m, a, kw, out: kind.post_forward(m, a, kw, out), with_kwargs=True
        ),
    ]
    transformer._vidgen_attention = installed


def _record_cache_context(transformer, kind: AttentionKind):
    original = transformer.cache_context  # bound method of the class

    @contextlib.contextmanager
    def cache_context(name: str, **kwargs):
        kind.state.context = name
        try:
            with original(name, **kwargs):
                yield
        finally:
            kind.state.context = None

    transformer.cache_context = cache_context
    return cache_context


def installed_attention(transformer) -> AttentionKind | None:
    """The attention kind installed on ``transformer``, or ``None`` (dense attention)."""
    installed = getattr(transformer, "_vidgen_attention", None)
    return installed.kind if installed is not None else None


def reset_attention(transformer) -> None:
    """Remove any installed attention kind: the transformer computes exactly what it did before."""
    installed = getattr(transformer, "_vidgen_attention", None)
    if installed is None:
        return
    for hook in installed.hooks:
        hook.remove()
    if isinstance(transformer, VidGenTransformer3DModel):
        for block in transformer.transformer_blocks:
            block.attn1.kind = block.attn2.kind = None
    else:
        transformer.set_attn_processor(installed.processors)
        if installed.cache_context is not None:
            del transformer.cache_context  # the class's method again
    del transformer._vidgen_attention


def apply_draft_attention(
    transformer,
    sparsity: float = 0.9,
    tile: tuple[int, int] = (8, 16),
    dense_timestep: float = 925.0,
    dense_blocks: int = 1,
    sink: bool = False,
    kernel: str = "auto",
) -> DraftAttention:
    """Make the transformer's self-attention DraftAttention block-sparse attention.

    Args:
        sparsity: fraction of (query tile, key tile) pairs skipped per head, in [0, 1).
        tile: tokens per tile (rows, columns) of one latent frame; 8x16 = 128 matches GPU kernels.
        dense_timestep: steps with a timestep above it (on [0, 1000]) stay dense.
        dense_blocks: the first blocks stay dense.
        sink: always keep the first frame's tiles as keys.
        kernel: ``"auto"`` (FlexAttention on CUDA, the gather kernel elsewhere), ``"gather"``, ``"flex"``,
            or ``"reference"`` (dense masked SDPA, for tests).
    """
    kind = DraftAttention(
        DraftAttentionConfig(sparsity, tuple(tile), dense_timestep, dense_blocks, sink, kernel)
    )
    _install(transformer, kind)
    return kind


def apply_freeswim(
    transformer,
    train_size: tuple[int, int] | None = None,
    inward: bool = True,
    dual_path: bool = True,
    cache_steps: int = 2,
    temperature: bool = False,
    tile: tuple[int, int] | None = None,
    kernel: str = "auto",
) -> FreeSwim:
    """Make the transformer's self-attention FreeSwim's inward sliding windows, with the dual path.

    Args:
        train_size: the training resolution as a latent token grid ``(rows, columns)``; the window's size.
            Defaults to a vidgen transformer's ``sample_size``.
        inward: shift border windows inside the grid (``False``: the naive window, clipped at borders).
        dual_path: run the full-attention branch whose cross-attention overrides the window branch's.
        cache_steps: the full branch runs every ``cache_steps``-th denoising step; between, its cached
            cross-attention is reused.
        temperature: scale the logits by ``sqrt(log N / log N_train)``.
        tile, kernel: block tiling and kernel of the sparse window attention.
    """
    if train_size is None:
        sample_size = getattr(transformer.config, "sample_size", None)
        if not isinstance(transformer, VidGenTransformer3DModel) or sample_size is None:
            raise ValueError("train_size is required: the training token grid (rows, columns)")
        p = transformer.config.patch_size
        train_size = (sample_size[1] // p, sample_size[2] // p)  # latent grid -> token grid
    kind = FreeSwim(
        FreeSwimConfig(tuple(train_size), inward, dual_path, cache_steps, temperature, tile, kernel)
    )
    _install(transformer, kind)
    return kind
