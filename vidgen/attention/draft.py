"""DraftAttention: a low-resolution attention map picks the tile pairs that block-sparse attention computes.

Per self-attention call (Shen et al. 2025, training-free):

1. Regroup the video tokens into tiles of one frame each (default 8x16 = 128 tokens; ragged borders padded),
   so that every tile is one contiguous block.
2. Average-pool queries and keys over each tile -> one "draft" token per tile; compute the draft
   attention map ``softmax(q_d k_d^T / sqrt(D))`` per head.
3. Per head, keep the top ``1 - sparsity`` fraction of all tile pairs (one global threshold over the map),
   plus each query tile's own tile and, optionally, every tile of the first frame ("sink"), so no row is empty.
4. Run block-sparse attention on the kept pairs and restore the original token order.

Text reaches vidgen's DiT, LTX-Video and Wan through cross-attention, which stays dense. The first
``dense_blocks`` blocks and every step with timestep above ``dense_timestep`` stay dense (the early
steps lay out the scene; Sparse VideoGen and DraftAttention keep them dense).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..models.attention import attention
from ..models.block_sparse import BlockSparsePattern, Tiling, check_kernel, tile_tokens
from .base import AttentionKind


@dataclass
class DraftAttentionConfig:
    sparsity: float = 0.9  # fraction of tile pairs skipped, per head
    tile: tuple[int, int] = (8, 16)  # tokens per tile (rows, columns) of one latent frame
    dense_timestep: float = 925.0  # steps with a timestep above this stay dense ([0, 1000] scale)
    dense_blocks: int = 1  # the first blocks stay dense
    sink: bool = False  # always keep the first frame's tiles as keys
    kernel: str = "auto"  # "auto", "gather", "flex" or "reference"

    def __post_init__(self):
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1); got {self.sparsity}")
        if len(self.tile) != 2 or min(self.tile) < 1:
            raise ValueError(f"tile must be two positive token counts (rows, columns); got {self.tile}")
        self.tile = (int(self.tile[0]), int(self.tile[1]))
        if self.dense_blocks < 0:
            raise ValueError(f"dense_blocks must be >= 0; got {self.dense_blocks}")
        check_kernel(self.kernel)


def draft_pattern(
    q: torch.Tensor, k: torch.Tensor, tiling: Tiling, cfg: DraftAttentionConfig
) -> BlockSparsePattern:
    """The kept tile pairs for ``(B, N, H, D)`` queries and keys: ``kept`` is ``(B, H, T, T)``."""
    valid = tiling.valid.view(tiling.num_tiles, tiling.block_size, 1).float()  # (T, P, 1)
    count = valid.sum(1)  # (T, 1) real tokens per tile

    def pool(x):  # (B, N, H, D) -> (B, H, T, D): the mean over each tile's real tokens, in fp32
        return (tiling.to_tiles(x).float() * valid).sum(3) / count

    qd, kd = pool(q), pool(k)
    draft = torch.softmax(qd @ kd.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)  # (B, H, T, T)
    B, H, T, _ = draft.shape
    n_keep = max(1, math.ceil((1.0 - cfg.sparsity) * T * T))
    top = draft.flatten(2).topk(n_keep, dim=-1).indices  # (B, H, n_keep): one threshold per head
    kept = torch.zeros(B, H, T * T, dtype=torch.bool, device=q.device).scatter_(2, top, True).view(B, H, T, T)
    kept |= torch.eye(T, dtype=torch.bool, device=q.device)  # each query tile sees its own tile
    if cfg.sink:
        _, th, tw = tiling.tile_grid
        kept[..., : th * tw] = True  # the first frame's tiles
    return BlockSparsePattern(tiling, kept, kernel=cfg.kernel)


class DraftAttention(AttentionKind):
    """Installed by :func:`vidgen.attention.apply_draft_attention`."""

    def __init__(self, config: DraftAttentionConfig):
        super().__init__()
        self.config = config
        self.last_pattern: BlockSparsePattern | None = None  # of the last sparse call, for reports

    def is_sparse(self, layer: int) -> bool:
        return layer >= self.config.dense_blocks and self.state.timestep <= self.config.dense_timestep

    def self_attention(self, q, k, v, layer: int, dense=attention) -> torch.Tensor:
        if not self.is_sparse(layer):
            return dense(q, k, v)
        pattern = draft_pattern(q, k, tile_tokens(self.state.grid, self.config.tile, q.device), self.config)
        self.last_pattern = pattern
        return attention(q, k, v, pattern)
