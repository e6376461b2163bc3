"""Embeddings shared by vidgen's transformers: 3D rotary positions and AdaLN-single timesteps."""

from __future__ import annotations

import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps, get_1d_rotary_pos_embed
from torch import nn


def split_rope_dims(head_dim: int) -> tuple[int, int, int]:
    """Split a head's channels over (frame, row, column); every part even, rows = columns."""
    if head_dim % 2:
        raise ValueError(f"attention_head_dim must be even for rotary embeddings; got {head_dim}")
    d_hw = 2 * (head_dim // 6)
    return head_dim - 2 * d_hw, d_hw, d_hw


class RotaryPosEmbed3D(nn.Module):
    """Rotary position embedding over integer (frame, row, column) positions of the token grid.

    Positions are grid indices, so the same weights run at any size or length; ``frame_offset``
    gives absolute frame positions to chunks of an autoregressive rollout. Angles are computed, not
    tabulated; the limit ``max_frame_position`` keeps the fastest frame angle (one radian per frame)
    within about 0.005 rad of exact in float32.
    """

    max_frame_position = 2**16

    def __init__(self, head_dim: int, theta: float = 10000.0, axes_dim: tuple[int, int, int] | None = None):
        super().__init__()
        self.axes_dim = tuple(axes_dim) if axes_dim is not None else split_rope_dims(head_dim)
        if sum(self.axes_dim) != head_dim or any(d % 2 for d in self.axes_dim):
            raise ValueError(f"rope_axes_dim must be even and sum to {head_dim}; got {self.axes_dim}")
        self.theta = theta

    def forward(
        self, frames: torch.Tensor, height: int, width: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``frames``: absolute frame indices ``(F,)``. Returns ``cos, sin`` of shape ``(F*H*W, head_dim)``."""
        positions = (
            frames.to(device),
            torch.arange(height, device=device),
            torch.arange(width, device=device),
        )
        cos, sin = [], []
        for axis, (dim, pos) in enumerate(zip(self.axes_dim, positions)):
            c, s = get_1d_rotary_pos_embed(dim, pos.float(), theta=self.theta, use_real=True)  # (len, dim)
            shape = [1, 1, 1, dim]
            shape[axis] = -1
            grid = (len(frames), height, width, dim)
            cos.append(c.view(shape).expand(grid))
            sin.append(s.view(shape).expand(grid))
        return torch.cat(cos, -1).flatten(0, 2), torch.cat(sin, -1).flatten(0, 2)


class AdaLNSingle(nn.Module):
    """PixArt-alpha's AdaLN-single: one timestep MLP shared by all blocks, ``num_mod`` vectors out.

    Timesteps come as one per sample ``(B,)``, per latent frame ``(B, F)`` or per token ``(B, N)``;
    the output keeps that granularity: ``(B, L, num_mod, D)`` with ``L`` in ``{1, F, N}``, plus the
    embedded timestep ``(B, L, D)`` for the final layer.
    """

    def __init__(self, dim: int, num_mod: int):
        super().__init__()
        self.num_mod = num_mod
        self.time_proj = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(256, dim)
        self.linear = nn.Linear(dim, num_mod * dim)

    def forward(self, timestep: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        B, L = timestep.shape
        emb = self.time_embed(self.time_proj(timestep.flatten()).to(dtype))  # (B*L, D)
        mod = self.linear(nn.functional.silu(emb))  # (B*L, num_mod*D)
        return mod.view(B, L, self.num_mod, -1), emb.view(B, L, -1)
