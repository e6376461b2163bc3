"""VidGenTransformer3DModel: a diffusion transformer over video latents.

Two block layouts share one file and one forward:

- ``"full"``: joint spatio-temporal self-attention over all ``F*H*W`` tokens (LTX-Video style);
- ``"factorized"``: temporal attention (each spatial position over frames), then spatial attention
  (each frame over its positions), then the MLP (VDT style).

Both add text cross-attention, AdaLN-single timestep modulation (one timestep per sample, per latent
frame or per token), 3D RoPE over (frame, row, column) and, for autoregressive rollout, a block-causal
chunk mask plus a :class:`~vidgen.models.kv_cache.KVCache`.

The call signature matches diffusers' ``LTXVideoTransformer3DModel`` (packed tokens ``(B, N, C)``
plus the latent grid), so one pipeline drives either model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.attention import FeedForward
from diffusers.models.embeddings import PixArtAlphaTextProjection, apply_rotary_emb
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from diffusers.utils.peft_utils import apply_lora_scale
from torch import nn

from .attention import attention, check_attention_backend
from .embeddings import AdaLNSingle, RotaryPosEmbed3D
from .kv_cache import KVCache

BLOCK_LAYOUTS = ("full", "factorized")


@dataclass
class VidGenTransformerOutput(BaseOutput):
    """``sample``: ``(B, N, C_out)`` predicted velocity. ``hidden_states``: with
    ``output_hidden_states``, the ``(B, N, D)`` output of every block, in order; else ``None``."""

    sample: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None


class Attention(nn.Module):
    """Multi-head attention projections (self- or cross-), with optional per-head QK RMSNorm.

    The attention itself runs through :func:`vidgen.models.attention.attention` with ``self.backend``.
    Linear layers are named like diffusers' (``to_q``, ``to_k``, ``to_v``, ``to_out.0``) so LoRA
    target modules carry over.
    """

    def __init__(self, dim: int, heads: int, head_dim: int, kv_dim: int | None = None, qk_norm: bool = True):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(kv_dim or dim, inner)
        self.to_v = nn.Linear(kv_dim or dim, inner)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim)])
        self.norm_q = nn.RMSNorm(head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.norm_k = nn.RMSNorm(head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.backend = "sdpa"
        self.kind = None  # an installed attention kind (vidgen.attention), or None for dense

    def qkv(self, x: torch.Tensor, context: torch.Tensor | None = None):
        """``(B, N, D) -> q, k, v`` each ``(B, N, H, Dh)`` (keys/values from ``context`` if given)."""
        context = x if context is None else context
        q = self.norm_q(self.to_q(x).unflatten(-1, (self.heads, -1)))
        k = self.norm_k(self.to_k(context).unflatten(-1, (self.heads, -1)))
        v = self.to_v(context).unflatten(-1, (self.heads, -1))
        return q, k, v

    def out(self, o: torch.Tensor) -> torch.Tensor:
        return self.to_out[0](o.flatten(-2))  # (B, N, H, Dh) -> (B, N, D)


@dataclass
class _Context:
    """What every block needs besides its input; built once per forward."""

    grid: tuple[int, int, int]  # token grid (F, H, W) of the current input
    frames: torch.Tensor  # (F,) absolute frame index of each input frame
    rope: tuple[torch.Tensor, torch.Tensor]  # cos, sin: (N, Dh)
    mod: torch.Tensor  # (B, L, K, D) AdaLN-single modulation, L in {1, N}
    text: torch.Tensor  # (B, T, D) projected text
    text_mask: torch.Tensor | None  # (B, 1, 1, T) bool
    chunk_of: Callable | None  # frame index -> causal chunk index; None = bidirectional
    kv_cache: KVCache | None
    update_kv_cache: bool


def block_causal_mask(
    q_chunks: torch.Tensor | None, k_chunks: torch.Tensor | None, tokens_per_frame: int
) -> torch.Tensor | None:
    """Boolean ``(Nq, Nk)`` mask from the chunk index of each query and key frame: a query sees keys of
    its own and earlier chunks. ``None`` (bidirectional, or nothing to hide): sees all."""
    if q_chunks is None:
        return None
    q = q_chunks.repeat_interleave(tokens_per_frame)
    k = k_chunks.repeat_interleave(tokens_per_frame)
    mask = k[None, :] <= q[:, None]
    return None if bool(mask.all()) else mask


def cached_self_attention(
    attn: Attention, q, k, v, tokens_per_frame: int, layer: int, ctx: _Context
) -> torch.Tensor:
    """Self-attention along frames with the block-causal mask and the KV cache.

    ``q, k, v``: ``(B', F*S, H, Dh)`` with ``S = tokens_per_frame``, RoPE already applied. The queries
    attend to the cached frames followed by the current ones; with ``update_kv_cache`` the current
    keys and values are appended to the cache afterwards.
    """
    k_all, v_all, k_frames = k, v, ctx.frames
    past = ctx.kv_cache.get(layer) if ctx.kv_cache is not None else None
    if past is not None:
        k_all, v_all = torch.cat([past[0], k], dim=1), torch.cat([past[1], v], dim=1)
        k_frames = torch.cat([past[2], ctx.frames])
    chunk_of = ctx.chunk_of
    mask = (
        None
        if chunk_of is None
        else block_causal_mask(chunk_of(ctx.frames), chunk_of(k_frames), tokens_per_frame)
    )
    out = attention(q, k_all, v_all, mask, attn.backend)
    if ctx.kv_cache is not None and ctx.update_kv_cache:
        F = len(ctx.frames)
        ctx.kv_cache.append(layer, k.unflatten(1, (F, -1)), v.unflatten(1, (F, -1)), ctx.frames)
    return out


class VidGenBlock(nn.Module):
    """One DiT block: self-attention (joint, or temporal then spatial), cross-attention, MLP."""

    def __init__(self, dim, heads, head_dim, layout, mlp_ratio, qk_norm, eps):
        super().__init__()
        self.layout = layout
        self.norm1 = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.attn1 = Attention(dim, heads, head_dim, qk_norm=qk_norm)  # joint, or spatial when factorized
        if layout == "factorized":
            self.norm_temporal = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
            self.attn_temporal = Attention(dim, heads, head_dim, qk_norm=qk_norm)
        self.norm2 = nn.LayerNorm(dim, eps=eps, elementwise_affine=True)
        self.attn2 = Attention(dim, heads, head_dim, qk_norm=qk_norm)  # cross-attention to text
        self.norm3 = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.ff = FeedForward(dim, mult=mlp_ratio, activation_fn="gelu-approximate")
        num_mod = 9 if layout == "factorized" else 6
        self.scale_shift_table = nn.Parameter(torch.randn(num_mod, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, layer: int, ctx: _Context) -> torch.Tensor:
        B, N, _ = x.shape
        F, H, W = ctx.grid
        mod = (ctx.mod + self.scale_shift_table).unbind(2)  # each (B, L, D)

        if self.layout == "factorized":
            # Temporal attention: every spatial position attends over frames.
            shift, scale, gate = mod[6:9]
            q, k, v = self.attn_temporal.qkv(self.norm_temporal(x) * (1 + scale) + shift)
            q, k = (
                apply_rotary_emb(q, ctx.rope, sequence_dim=1),
                apply_rotary_emb(k, ctx.rope, sequence_dim=1),
            )
            q, k, v = (
                t.unflatten(1, (F, H * W)).transpose(1, 2).flatten(0, 1) for t in (q, k, v)
            )  # (B*HW, F, H, Dh)
            o = cached_self_attention(self.attn_temporal, q, k, v, 1, layer, ctx)
            o = o.unflatten(0, (B, H * W)).transpose(1, 2).flatten(1, 2)  # (B, N, H, Dh)
            x = x + gate * self.attn_temporal.out(o)

        # Joint (full) or per-frame spatial (factorized) self-attention.
        shift, scale, gate = mod[0:3]
        q, k, v = self.attn1.qkv(self.norm1(x) * (1 + scale) + shift)
        q, k = apply_rotary_emb(q, ctx.rope, sequence_dim=1), apply_rotary_emb(k, ctx.rope, sequence_dim=1)
        if self.layout == "full" and self.attn1.kind is not None:  # DraftAttention, FreeSwim
            if ctx.kv_cache is not None:
                raise ValueError("attention kinds (DraftAttention, FreeSwim) do not take a kv_cache")
            backend = self.attn1.backend
            o = self.attn1.kind.self_attention(
                q, k, v, layer, lambda q, k, v: attention(q, k, v, None, backend)
            )
        elif self.layout == "full":
            o = cached_self_attention(self.attn1, q, k, v, H * W, layer, ctx)
        else:
            q, k, v = (t.unflatten(1, (F, H * W)).flatten(0, 1) for t in (q, k, v))  # (B*F, HW, H, Dh)
            o = attention(q, k, v, None, self.attn1.backend).unflatten(0, (B, F)).flatten(1, 2)
        x = x + gate * self.attn1.out(o)

        # Cross-attention to the text.
        q, k, v = self.attn2.qkv(self.norm2(x), ctx.text)
        cross = self.attn2.out(attention(q, k, v, ctx.text_mask, self.attn2.backend))
        if self.attn2.kind is not None:
            cross = self.attn2.kind.after_cross_attention(cross, layer)
        x = x + cross

        # Feed-forward.
        shift, scale, gate = mod[3:6]
        return x + gate * self.ff(self.norm3(x) * (1 + scale) + shift)


class VidGenTransformer3DModel(ModelMixin, ConfigMixin, PeftAdapterMixin):
    r"""A diffusion transformer over packed video latents.

    Args:
        in_channels: latent channels per token (after packing ``patch_size_t x patch_size^2`` voxels).
        out_channels: predicted channels per token (defaults to ``in_channels``).
        patch_size, patch_size_t: packing done by the pipeline (``1``: the VAE already patchifies).
        num_layers, num_attention_heads, attention_head_dim: trunk size; width = heads * head dim.
        caption_channels: width of the text encoder's hidden states.
        caption_positions: if set, a learned embedding of each text token's absolute position (up to this
            many tokens), added to the projected text (zero-initialised). A text encoder with relative
            positions only can hand over context-free word vectors (the default model's did: "red" came
            out the same wherever it stood), and then "red ... and blue ..." cannot tell the DiT which
            object is red; the position says which clause a word is in.
        block_layout: ``"full"`` (joint attention) or ``"factorized"`` (temporal, then spatial).
        mlp_ratio: hidden width of the MLP relative to the model width.
        qk_norm: RMSNorm on queries and keys per head.
        rope_theta, rope_axes_dim: 3D RoPE base and channel split over (frame, row, column).
        causal_chunk_size: latent frames per chunk of block-causal self-attention (``None``: bidirectional).
        independent_first_frame: with ``causal_chunk_size``, latent frame 0 (the causal VAE's lone first
            pixel frame) is a chunk by itself and the chunks of ``causal_chunk_size`` start at frame 1.
        sample_size: latent grid ``(F, H, W)`` the model was trained at; pipelines use it as default size.
        sample_frame_rate: frames per second of the training videos (the CLI's default ``--fps``).
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["VidGenBlock"]
    _skip_layerwise_casting_patterns = ["scale_shift_table", "norm"]

    @register_to_config
    def __init__(
        self,
        in_channels: int = 16,
        out_channels: int | None = None,
        patch_size: int = 1,
        patch_size_t: int = 1,
        num_layers: int = 4,
        num_attention_heads: int = 4,
        attention_head_dim: int = 32,
        caption_channels: int = 64,
        caption_positions: int | None = None,
        block_layout: str = "full",
        mlp_ratio: float = 4.0,
        qk_norm: bool = True,
        norm_eps: float = 1e-6,
        rope_theta: float = 10000.0,
        rope_axes_dim: tuple[int, int, int] | None = None,
        causal_chunk_size: int | None = None,
        independent_first_frame: bool = False,
        sample_size: tuple[int, int, int] = (5, 8, 8),
        sample_frame_rate: float | None = None,
    ):
        super().__init__()
        if block_layout not in BLOCK_LAYOUTS:
            raise ValueError(f"block_layout must be one of {BLOCK_LAYOUTS}; got {block_layout!r}")
        if causal_chunk_size is not None and causal_chunk_size < 1:
            raise ValueError(f"causal_chunk_size must be >= 1 or None; got {causal_chunk_size}")
        dim = num_attention_heads * attention_head_dim
        out_channels = out_channels or in_channels
        self.proj_in = nn.Linear(in_channels, dim)
        self.caption_projection = PixArtAlphaTextProjection(caption_channels, dim)
        self.caption_position_embedding = (
            nn.Parameter(torch.zeros(caption_positions, dim)) if caption_positions else None
        )  # (T_max, D)
        self.rope = RotaryPosEmbed3D(attention_head_dim, rope_theta, rope_axes_dim)
        self.adaln_single = AdaLNSingle(dim, num_mod=9 if block_layout == "factorized" else 6)
        self.transformer_blocks = nn.ModuleList(
            VidGenBlock(
                dim, num_attention_heads, attention_head_dim, block_layout, mlp_ratio, qk_norm, norm_eps
            )
            for _ in range(num_layers)
        )
        self.norm_out = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=False)
        self.scale_shift_table = nn.Parameter(torch.randn(2, dim) / dim**0.5)
        self.proj_out = nn.Linear(dim, out_channels)
        self.gradient_checkpointing = False
        self._init_weights()

    def _init_weights(self) -> None:
        # DiT-style: xavier linears, zero-initialised modulation and output, so training starts from
        # identity blocks and a zero velocity.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.adaln_single.time_embed.linear_1.weight, std=0.02)
        nn.init.normal_(self.adaln_single.time_embed.linear_2.weight, std=0.02)
        nn.init.zeros_(self.adaln_single.linear.weight)
        nn.init.zeros_(self.proj_out.weight)

    # ----------------------------------------------------------------------------------------------
    # Attention backend: the one dispatch point, chosen once.
    def set_attention_backend(self, backend: str) -> None:
        """Use the named backend (``"sdpa"``, ``"xformers"``, ``"flex"``) for every attention layer."""
        check_attention_backend(backend)
        for module in self.modules():
            if isinstance(module, Attention):
                module.backend = backend

    def reset_attention_backend(self) -> None:
        self.set_attention_backend("sdpa")

    @property
    def attention_backend(self) -> str:
        return next(m.backend for m in self.modules() if isinstance(m, Attention))

    # ----------------------------------------------------------------------------------------------
    # Causal chunks (autoregressive mode).
    def chunk_of(self, frames: torch.Tensor) -> torch.Tensor:
        """Causal chunk index of each absolute latent frame index."""
        chunk = self.config.causal_chunk_size
        if self.config.independent_first_frame:
            return torch.where(frames > 0, (frames - 1).clamp_min(0) // chunk + 1, 0)
        return frames // chunk

    def chunk_starts(self, num_frames: int) -> list[int]:
        """First frame of every chunk below ``num_frames``, then ``num_frames`` (so consecutive entries
        bound the chunks; the last one may be shorter)."""
        chunk = self.config.causal_chunk_size or num_frames
        first = [0] if self.config.independent_first_frame and chunk > 1 else []
        offset = 1 if first else 0
        return [*first, *range(offset, num_frames, chunk), num_frames]

    def _timesteps_per_token(
        self, timestep: torch.Tensor, B: int, grid: tuple[int, int, int]
    ) -> torch.Tensor:
        """Normalise ``timestep`` to ``(B, 1)``, ``(B, F)`` or ``(B, N)``."""
        F, H, W = grid
        timestep = torch.as_tensor(timestep, device=self.device)
        if timestep.ndim == 0:
            timestep = timestep.expand(B)
        if timestep.ndim == 1:
            timestep = timestep[:, None]
        if timestep.ndim != 2 or timestep.shape[0] != B or timestep.shape[1] not in (1, F, F * H * W):
            raise ValueError(
                f"timestep must be (B,), (B, F) or (B, N) with B={B}, F={F}, N={F * H * W}; "
                f"got {tuple(timestep.shape)}"
            )
        return timestep

    @apply_lora_scale("attention_kwargs")
    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        frame_offset: int = 0,
        kv_cache: KVCache | None = None,
        update_kv_cache: bool = False,
        block_residuals: dict[int, torch.Tensor] | None = None,
        output_hidden_states: bool = False,
        attention_kwargs: dict | None = None,
        return_dict: bool = True,
    ):
        """Predict the flow velocity of packed latent tokens.

        Args:
            hidden_states: ``(B, N, C)`` packed latents, ``N = F*H*W`` tokens in (frame, row, column) order.
            encoder_hidden_states: ``(B, T, caption_channels)`` text encoder states.
            timestep: ``(B,)``, ``(B, F)`` or ``(B, N)`` in the scheduler's ``[0, 1000]`` range.
            encoder_attention_mask: ``(B, T)``, 1/True on real text tokens.
            num_frames, height, width: latent grid before packing (the pipeline passes it).
            frame_offset: absolute index of the first frame (positions and causal chunks of a rollout).
            kv_cache: past keys and values; the input's queries attend to them first.
            update_kv_cache: append this input's keys and values to ``kv_cache``.
            block_residuals: ``{block index: (B, N, D)}`` added to that block's output (the guidance of
                :class:`~vidgen.models.turbo2k.HierarchicalAdapter`, ControlNet-style).
            output_hidden_states: also return every block's output (feature alignment, hierarchy).
        """
        cfg = self.config
        B, N, _ = hidden_states.shape
        grid = (num_frames // cfg.patch_size_t, height // cfg.patch_size, width // cfg.patch_size)
        F, H, W = grid
        if F * H * W != N:
            raise ValueError(f"hidden_states has {N} tokens but the grid {grid} has {F * H * W}")

        if frame_offset < 0 or frame_offset + F > self.rope.max_frame_position:
            raise ValueError(
                f"frame positions must lie in [0, {self.rope.max_frame_position}) (the rotary embedding's "
                f"limit); got frames {frame_offset}..{frame_offset + F - 1}"
            )
        if kv_cache is not None and update_kv_cache:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                raise ValueError(
                    "update_kv_cache cannot run under gradient checkpointing (the cache would be written twice)"
                )
            starts = self.chunk_starts(frame_offset + F + 1)
            if cfg.causal_chunk_size is not None and not {frame_offset, frame_offset + F} <= set(starts):
                raise ValueError(
                    f"cache writes must cover whole chunks (causal_chunk_size={cfg.causal_chunk_size}, "
                    f"independent_first_frame={cfg.independent_first_frame}): frames must start and end at chunk "
                    f"boundaries {starts[:6]}...; got frame_offset={frame_offset}, frames={F}"
                )

        # 1. Timestep modulation, kept at its granularity until it meets the tokens.
        t = self._timesteps_per_token(timestep, B, grid)  # (B, L)
        mod, emb = self.adaln_single(t, hidden_states.dtype)  # (B, L, K, D), (B, L, D)
        if t.shape[1] == F and F != N:  # per-frame -> per-token
            mod, emb = mod.repeat_interleave(H * W, dim=1), emb.repeat_interleave(H * W, dim=1)

        # 2. Positions, text and the per-forward context.
        frames = torch.arange(frame_offset, frame_offset + F, device=hidden_states.device)
        text = self.caption_projection(encoder_hidden_states)  # (B, T, D)
        if self.caption_position_embedding is not None:
            T = text.shape[1]
            if T > cfg.caption_positions:
                raise ValueError(
                    f"encoder_hidden_states has {T} text tokens; this model embeds at most "
                    f"caption_positions={cfg.caption_positions}"
                )
            text = text + self.caption_position_embedding[:T].to(text.dtype)
        text_mask = None
        if encoder_attention_mask is not None:
            text_mask = encoder_attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        ctx = _Context(
            grid=grid,
            frames=frames,
            rope=self.rope(frames, H, W, hidden_states.device),
            mod=mod,
            text=text,
            text_mask=text_mask,
            chunk_of=None if cfg.causal_chunk_size is None else self.chunk_of,
            kv_cache=kv_cache,
            update_kv_cache=update_kv_cache,
        )

        if block_residuals and not set(block_residuals) <= set(range(cfg.num_layers)):
            raise ValueError(
                f"block_residuals keys must be block indices in [0, {cfg.num_layers}); got {sorted(block_residuals)}"
            )
        width = cfg.num_attention_heads * cfg.attention_head_dim
        for block, r in (block_residuals or {}).items():
            if tuple(r.shape) != (B, N, width):
                raise ValueError(
                    f"block_residuals[{block}] must be (B, N, D) = {(B, N, width)}; got {tuple(r.shape)}"
                )

        # 3. Trunk.
        x = self.proj_in(hidden_states)  # (B, N, D)
        hidden = []
        for i, block in enumerate(self.transformer_blocks):
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._gradient_checkpointing_func(block, x, i, ctx)
            else:
                x = block(x, i, ctx)
            if block_residuals and i in block_residuals:
                x = x + block_residuals[i]
            if output_hidden_states:
                hidden.append(x)

        # 4. Final modulated projection.
        shift, scale = (self.scale_shift_table + emb[:, :, None]).unbind(2)  # (B, L, D)
        out = self.proj_out(self.norm_out(x) * (1 + scale) + shift)  # (B, N, C_out)
        hidden = tuple(hidden) if output_hidden_states else None
        if not return_dict:
            return (out,) if hidden is None else (out, hidden)
        return VidGenTransformerOutput(sample=out, hidden_states=hidden)
