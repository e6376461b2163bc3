"""Block-sparse attention over tiled video tokens: the kernels behind vidgen's sparse attention kinds.

A sparse kind (DraftAttention, FreeSwim's windows) describes which keys each query may see as a
:class:`BlockSparsePattern`: the tokens of a latent grid ``(F, H, W)`` are regrouped into tiles of
``(th, tw)`` tokens of one frame (ragged borders padded), so that every tile is one contiguous block of
``P = th * tw`` slots, and a boolean table says which (query tile, key tile) pairs are computed. An
optional token rule refines the kept pairs to single tokens (FreeSwim's windows do not follow tiles).

Three kernels compute a pattern; all take and return ``(B, N, H, D)`` in the original token order:

- ``"reference"``: dense SDPA with the pattern expanded to a boolean ``(N, N)`` mask. It is the
  ground truth that the other kernels are tested against, and it costs as much as dense attention.
- ``"gather"``: any device; gathers the kept (query tile, key tile) pairs, scores each pair with
  batched matmuls and takes the softmax over each query row's pairs. Work and memory scale with the
  number of kept pairs, so it beats dense SDPA on a CPU at high sparsity.
- ``"flex"``: FlexAttention with a ``BlockMask`` of block size ``P`` (for GPUs; on a CPU it runs
  eagerly and slowly, for tests).

``"auto"`` picks ``"flex"`` on CUDA and ``"gather"`` elsewhere.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

TokenRule = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (q coords, k coords) (..., 3) -> bool


@dataclass(frozen=True)
class Tiling:
    """Tokens of a ``(F, H, W)`` grid regrouped tile by tile; tile order ``(frame, tile row, tile column)``."""

    grid: tuple[int, int, int]
    tile: tuple[int, int]  # (th, tw) after clamping to the grid
    order: torch.Tensor  # (T*P,) token index held by each slot; N marks a padding slot
    inverse: torch.Tensor  # (N,) slot of each token
    valid: torch.Tensor  # (T*P,) bool, False on padding slots
    coords: torch.Tensor  # (T*P, 3) (f, h, w) of each slot; padding slots take their tile's border token

    @property
    def block_size(self) -> int:
        return self.tile[0] * self.tile[1]

    @property
    def tile_grid(self) -> tuple[int, int, int]:
        F_, H, W = self.grid
        return F_, math.ceil(H / self.tile[0]), math.ceil(W / self.tile[1])

    @property
    def num_tiles(self) -> int:
        return math.prod(self.tile_grid)

    def to_tiles(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, H, D) -> (B, H, T, P, D)``; padding slots are zeros."""
        B, _, heads, D = x.shape
        x = torch.cat([x, x.new_zeros(B, 1, heads, D)], dim=1).index_select(
            1, self.order.to(x.device)
        )  # (B, T*P, H, D)
        return x.unflatten(1, (self.num_tiles, self.block_size)).permute(0, 3, 1, 2, 4)

    def from_tiles(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, T, P, D) -> (B, N, H, D)`` in the original token order."""
        x = x.flatten(2, 3).transpose(1, 2)  # (B, T*P, H, D)
        return x.index_select(1, self.inverse.to(x.device))


@functools.lru_cache(maxsize=64)
def tile_tokens(
    grid: tuple[int, int, int], tile: tuple[int, int], device: torch.device | str = "cpu"
) -> Tiling:
    """The tiling of ``grid`` with tiles of ``tile`` tokens (clamped to the grid's height and width), with
    its index tensors on ``device`` (cached per grid, tile and device)."""
    device = torch.device(device)
    if device.type != "cpu":
        t = tile_tokens(grid, tile)
        return Tiling(t.grid, t.tile, *(x.to(device) for x in (t.order, t.inverse, t.valid, t.coords)))
    F_, H, W = grid
    th, tw = min(tile[0], H), min(tile[1], W)
    nh, nw = math.ceil(H / th), math.ceil(W / tw)
    shape = (F_, nh, nw, th, tw)
    f = torch.arange(F_).view(-1, 1, 1, 1, 1).expand(shape)
    h = (torch.arange(nh).view(1, -1, 1, 1, 1) * th + torch.arange(th).view(1, 1, 1, -1, 1)).expand(shape)
    w = (torch.arange(nw).view(1, 1, -1, 1, 1) * tw + torch.arange(tw).view(1, 1, 1, 1, -1)).expand(shape)
    valid = ((h < H) & (w < W)).flatten()
    order = torch.where(valid, (f * H * W + h * W + w).flatten(), F_ * H * W)
    coords = torch.stack([f, h.clamp(max=H - 1), w.clamp(max=W - 1)], dim=-1).reshape(-1, 3)
    inverse = torch.empty(F_ * H * W, dtype=torch.long)
    inverse[order[valid]] = torch.arange(len(order))[valid]
    return Tiling((F_, H, W), (th, tw), order, inverse, valid, coords)


@dataclass
class BlockSparsePattern:
    """Which keys each query sees: kept (query tile, key tile) pairs, optionally refined per token."""

    tiling: Tiling
    kept: torch.Tensor  # (B or 1, H or 1, T, T) bool
    token_rule: TokenRule | None = None  # rule(q_coords, k_coords) -> may attend, inside kept pairs
    kernel: str = "auto"

    def __post_init__(self):
        T = self.tiling.num_tiles
        if self.kept.dtype != torch.bool or self.kept.ndim != 4 or self.kept.shape[-2:] != (T, T):
            raise ValueError(
                f"kept must be a bool tensor (B or 1, H or 1, {T}, {T}); got {self.kept.dtype} {tuple(self.kept.shape)}"
            )
        check_kernel(self.kernel)

    def token_mask(self) -> torch.Tensor:
        """The pattern as a dense boolean mask ``(B or 1, H or 1, N, N)`` in the original token order."""
        t = self.tiling
        tile_of = (t.inverse // t.block_size).to(self.kept.device)  # (N,)
        mask = self.kept[:, :, tile_of][:, :, :, tile_of]
        if self.token_rule is not None:
            c = t.coords[t.inverse].to(self.kept.device)  # (N, 3)
            mask = mask & self.token_rule(c[:, None], c[None, :])
        return mask

    def kept_fraction(self) -> torch.Tensor:
        """Fraction of tile pairs kept, per batch row and head: ``(B or 1, H or 1)``."""
        return self.kept.float().mean(dim=(-2, -1))


# --------------------------------------------------------------------------------------------------
# Kernels.
_KERNELS: dict[str, Callable] = {}


def _kernel(name):
    def decorator(fn):
        _KERNELS[name] = fn
        return fn

    return decorator


def check_kernel(name: str) -> str:
    if name != "auto" and name not in _KERNELS:
        raise ValueError(
            f"sparse attention kernel must be one of {sorted(_KERNELS) + ['auto']}; got {name!r}"
        )
    return name


def sparse_attention(q, k, v, pattern: BlockSparsePattern, kernel: str | None = None) -> torch.Tensor:
    """Attention of ``(B, N, H, D)`` tensors restricted to ``pattern``, with the named (or the pattern's) kernel.

    ``"auto"``: FlexAttention on CUDA when the block size is a multiple of 128 (its compiled kernels'
    tile), else the gather kernel.
    """
    name = check_kernel(kernel or pattern.kernel)
    if name == "auto":
        name = "flex" if q.is_cuda and pattern.tiling.block_size % 128 == 0 else "gather"
    B, N, heads, _ = q.shape
    if N != math.prod(pattern.tiling.grid):
        raise ValueError(
            f"q has {N} tokens but the pattern's grid {pattern.tiling.grid} has {math.prod(pattern.tiling.grid)}"
        )
    if pattern.kept.shape[0] not in (1, B) or pattern.kept.shape[1] not in (1, heads):
        raise ValueError(
            f"pattern.kept is for batch {pattern.kept.shape[0]} and {pattern.kept.shape[1]} heads; q has {B} and {heads}"
        )
    return _KERNELS[name](q, k, v, pattern)


@_kernel("reference")
def _reference(q, k, v, pattern):
    mask = pattern.token_mask().to(q.device)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask
    )
    return out.transpose(1, 2)


@_kernel("gather")
def _gather(q, k, v, pattern, budget: int = 2**25):
    t = pattern.tiling
    B, _, heads, D = q.shape
    T, P = t.num_tiles, t.block_size
    qt, kt, vt = (t.to_tiles(x).flatten(0, 2) for x in (q, k, v))  # (B*H*T, P, D): row r = (b, h, i)
    valid = t.valid.to(q.device).view(T, P)
    coords = t.coords.to(q.device).view(T, P, 3)
    kept = pattern.kept.to(q.device).expand(B, heads, T, T).reshape(B * heads * T, T)
    counts = kept.sum(-1)  # (R,) kept key tiles per query row
    if bool((counts == T).all()) and pattern.token_rule is None:  # nothing is skipped: plain dense attention
        return F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        ).transpose(1, 2)
    # Rows grouped by their count of kept key tiles, so that a group gathers exactly its rows' kept
    # tiles and runs one dense SDPA call, in chunks of at most `budget` numbers (scores, or gathered
    # keys and values, whichever is larger); a mask is needed only for the padding slots of ragged
    # tiles and for a token rule.
    out = torch.zeros_like(qt)
    kt2, vt2 = kt.view(len(kt), P * D), vt.view(len(vt), P * D)  # row gathers are plain copies
    ragged = not bool(valid.all())
    for K in counts.unique().tolist():
        if K == 0:  # rows that keep no key tile stay zero
            continue
        group = (counts == K).nonzero()[:, 0]
        for rows in group.split(max(1, budget // (K * P * max(P, 2 * D)))):
            tiles = kept[rows].nonzero()[:, 1].view(len(rows), K)  # (n, K) kept key tiles, ascending
            key_rows = ((rows // T * T)[:, None] + tiles).flatten()  # rows (b, h, j) of kt / vt
            keys, values = (F.embedding(key_rows, x).view(len(rows), 1, K * P, D) for x in (kt2, vt2))
            mask = None
            if ragged or pattern.token_rule is not None:
                mask = valid[tiles].flatten(1)[:, None, None, :]  # (n, 1, 1, K*P)
                if pattern.token_rule is not None:
                    q_coords, k_coords = coords[rows % T][:, :, None], coords[tiles].flatten(1, 2)[:, None]
                    mask = mask & pattern.token_rule(q_coords, k_coords)[:, None]  # (n, 1, P, K*P)
            o = F.scaled_dot_product_attention(
                qt.index_select(0, rows)[:, None], keys, values, attn_mask=mask
            )
            out.index_copy_(0, rows, o[:, 0])  # (n, P, D)
    return t.from_tiles(out.view(B, heads, T, P, D))


@functools.cache
def _compiled_flex_attention():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


@_kernel("flex")
def _flex(q, k, v, pattern):
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    t = pattern.tiling
    P, T = t.block_size, t.num_tiles
    kept, valid, coords = pattern.kept.to(q.device), t.valid.to(q.device), t.coords.to(q.device)
    rule = pattern.token_rule
    per_batch, per_head = kept.shape[0] > 1, kept.shape[1] > 1

    def mask_mod(b, h, q_idx, kv_idx):  # the whole pattern (uncompiled flex applies only this)
        ok = kept[b if per_batch else 0, h if per_head else 0, q_idx // P, kv_idx // P] & valid[kv_idx]
        if rule is not None:
            ok = ok & rule(coords[q_idx], coords[kv_idx])
        return ok

    # The BlockMask straight from the kept tile pairs (no dense (N, N) mask is built). The compiled
    # kernel skips unkept blocks and calls mask_mod only on "partial" blocks: all kept blocks when
    # tiles are ragged or a token rule refines them, none otherwise ("full" blocks).
    counts = kept.sum(-1, dtype=torch.int32)  # (B', H', T)
    indices = torch.argsort(kept.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
    partial = rule is not None or not bool(valid.all())
    none = torch.zeros_like(counts)
    block_mask = BlockMask.from_kv_blocks(
        counts if partial else none, indices, None if partial else counts, None if partial else indices,
        BLOCK_SIZE=P, mask_mod=mask_mod, seq_lengths=(T * P, T * P),
    )  # fmt: skip
    attend = _compiled_flex_attention() if q.is_cuda else flex_attention
    qt, kt, vt = (t.to_tiles(x).flatten(2, 3) for x in (q, k, v))  # (B, H, T*P, D)
    out = attend(qt, kt, vt, block_mask=block_mask)  # (B, H, T*P, D)
    return t.from_tiles(out.unflatten(2, (T, P)))
