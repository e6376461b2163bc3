"""FreeSwim: inward sliding-window self-attention for training-free high resolution (Wu et al. 2025).

At a resolution above training, every query attends to a window of the training token grid's size
``(wh, ww)`` in every frame. Near a border the window is shifted back inside the grid instead of
clipped ("inward"), so each query keeps exactly the receptive field it was trained with; the naive
window (``inward=False``) loses keys at the borders.

Windows alone repeat content (each window composes its own scene). The dual path fixes the layout:
a full-attention branch runs beside the window branch on the same latents, and its text
cross-attention output replaces the window branch's, which carries one global layout into every
window. The full branch's cross-attention is cached and the branch runs only every ``cache_steps``
steps; the unconditional rows of a guidance batch never run it. Optional temperature scaling
multiplies the logits by ``sqrt(log N / log N_train)`` (tokens per frame at the target and training
sizes), the entropy-invariance correction of the official code, which hard-codes the ratio.

At or below the training grid the window covers everything: attention stays dense and exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..models.attention import attention
from ..models.block_sparse import BlockSparsePattern, Tiling, check_kernel, tile_tokens
from .base import _CONDITIONAL_ROWS, AttentionKind

# Per model family, the forward arguments that carry the batch (the dual path doubles them).
BATCHED_ARGUMENTS = (
    "hidden_states", "encoder_hidden_states", "timestep", "encoder_attention_mask", "video_coords",
    "encoder_hidden_states_image",
)  # fmt: skip


@dataclass
class FreeSwimConfig:
    train_size: tuple[int, int]  # the training token grid (rows, columns) = the window
    inward: bool = True  # shift border windows inside (False: the naive clipped window)
    dual_path: bool = True  # full-attention branch whose cross-attention overrides the window branch's
    cache_steps: int = 2  # the full branch runs every cache_steps-th step; its cross-attention is reused
    temperature: bool = False  # scale logits by sqrt(log N / log N_train)
    tile: tuple[int, int] | None = None  # kernel tiling (default: half the window, at most 8x16)
    kernel: str = "auto"

    def __post_init__(self):
        if len(self.train_size) != 2 or min(self.train_size) < 1:
            raise ValueError(
                f"train_size must be the training token grid (rows, columns); got {self.train_size}"
            )
        self.train_size = (int(self.train_size[0]), int(self.train_size[1]))
        if self.cache_steps < 1:
            raise ValueError(f"cache_steps must be >= 1; got {self.cache_steps}")
        check_kernel(self.kernel)
        if self.tile is None:
            self.tile = (max(1, min(8, self.train_size[0] // 2)), max(1, min(16, self.train_size[1] // 2)))


def window_starts(pos: torch.Tensor, size: int, window: int, inward: bool) -> torch.Tensor:
    """First row (or column) of the window of queries at ``pos`` along an axis of ``size`` tokens."""
    start = pos - window // 2
    return start.clamp(0, max(size - window, 0)) if inward else start


def window_rule(grid: tuple[int, int, int], window: tuple[int, int], inward: bool):
    """``rule(q_coords, k_coords) -> bool``: the key lies in the query's window (any frame)."""
    _, H, W = grid
    wh, ww = window

    def rule(qc: torch.Tensor, kc: torch.Tensor) -> torch.Tensor:
        sh = window_starts(qc[..., 1], H, wh, inward)
        sw = window_starts(qc[..., 2], W, ww, inward)
        kh, kw = kc[..., 1], kc[..., 2]
        return (kh >= sh) & (kh < sh + wh) & (kw >= sw) & (kw < sw + ww)

    return rule


def window_tiles(tiling: Tiling, window: tuple[int, int], inward: bool) -> torch.Tensor:
    """``(1, 1, T, T)``: tile pairs holding at least one (query, key) pair of some window."""
    F_, H, W = tiling.grid
    _, nh, nw = tiling.tile_grid

    def axis(size, tile, n, win):  # (n, n): tile a's windows reach tile b along one axis
        pos = torch.arange(size)
        start = window_starts(pos, size, win, inward)
        lo = torch.full((n,), size).scatter_reduce(0, pos // tile, start, "amin")
        hi = torch.zeros(n, dtype=torch.long).scatter_reduce(0, pos // tile, start + win, "amax")
        b0 = torch.arange(n) * tile
        return (lo[:, None] < (b0 + tile)[None, :]) & (hi[:, None] > b0[None, :])

    rows = axis(H, tiling.tile[0], nh, window[0])
    cols = axis(W, tiling.tile[1], nw, window[1])
    spatial = (rows[:, None, :, None] & cols[None, :, None, :]).reshape(nh * nw, nh * nw)
    S = nh * nw
    return spatial[None, :, None, :].expand(F_, S, F_, S).reshape(1, 1, F_ * S, F_ * S)


def window_pattern(grid, window, inward: bool, tile, kernel="auto", device="cpu") -> BlockSparsePattern:
    """The (inward or naive) window pattern of ``grid``, tiled by ``tile``, with tensors on ``device``."""
    tiling = tile_tokens(grid, tile, device)
    kept = window_tiles(tile_tokens(grid, tile), window, inward).to(device)
    return BlockSparsePattern(tiling, kept, window_rule(grid, window, inward), kernel)


class FreeSwim(AttentionKind):
    """Installed by :func:`vidgen.attention.apply_freeswim`."""

    overrides_cross_attention = True

    def __init__(self, config: FreeSwimConfig):
        super().__init__()
        self.config = config
        self.dual = False  # this call runs the full branch (rows [batch:] of the doubled batch)
        self.rows = torch.zeros(0, dtype=torch.long)  # conditional rows of the caller's batch
        # (call slot, layer) -> full branch's cross-attention output; the slot tells apart the calls of a
        # step (separate conditional and unconditional calls must not share their cache).
        self.cache: dict[tuple, torch.Tensor] = {}
        self._pattern: tuple | None = None

    def windowed(self) -> bool:
        _, H, W = self.state.grid
        return H > self.config.train_size[0] or W > self.config.train_size[1]

    # -- the dual path: double the conditional rows, keep the window branch's output ---------------
    def conditional(self, batch: int) -> torch.Tensor:
        """Indices of the conditional rows of this call: vidgen's pipelines say so through
        :func:`~vidgen.attention.conditional_rows`; diffusers' pipelines that guide with separate calls
        name them ``"cond"`` / ``"uncond"`` (``cache_context``); otherwise every row counts."""
        flags = _CONDITIONAL_ROWS.get()
        if flags is not None:
            if len(flags) != batch:
                raise ValueError(f"conditional_rows has {len(flags)} entries for a batch of {batch}")
            return flags.nonzero()[:, 0].cpu()
        if self.state.context == "uncond":
            return torch.zeros(0, dtype=torch.long)
        return torch.arange(batch)

    def adjust_inputs(self, values: dict) -> bool:
        B = self.state.batch
        self.rows = self.conditional(B)
        if self.state.step == 0 and self.state.call == 0:
            self.cache.clear()
        guide = self.state.step % self.config.cache_steps == 0
        self.dual = self.config.dual_path and self.windowed() and guide and len(self.rows) > 0
        if not self.dual:
            return False
        for name in BATCHED_ARGUMENTS:
            value = values.get(name)
            if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == B:
                values[name] = torch.cat([value, value[self.rows.to(value.device)]])
            elif isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] != 1:
                raise ValueError(f"FreeSwim's dual path: {name} has batch {value.shape[0]}, expected {B}")
        return True

    def adjust_output(self, output):
        if not self.dual:
            return output
        B = self.state.batch
        if isinstance(output, tuple):
            return (output[0][:B],) + tuple(output[1:])
        output.sample = output.sample[:B]
        return output

    # -- attention ---------------------------------------------------------------------------------
    def temperature_factor(self) -> float:
        if not self.config.temperature:
            return 1.0
        _, H, W = self.state.grid
        n_train = self.config.train_size[0] * self.config.train_size[1]
        return math.sqrt(math.log(H * W) / math.log(n_train)) if n_train > 1 else 1.0

    def pattern(self, device) -> BlockSparsePattern:
        cfg = self.config
        key = (self.state.grid, cfg.train_size, cfg.inward, cfg.tile, cfg.kernel, str(device))
        if self._pattern is None or self._pattern[0] != key:
            grid = self.state.grid
            self._pattern = (
                key,
                window_pattern(grid, cfg.train_size, cfg.inward, cfg.tile, cfg.kernel, device),
            )
        return self._pattern[1]

    def slot(self):
        return self.state.context if self.state.context is not None else self.state.call

    def self_attention(self, q, k, v, layer: int, dense=attention) -> torch.Tensor:
        if not self.windowed():
            return dense(q, k, v)
        q = q * self.temperature_factor()
        if not self.dual:
            return attention(q, k, v, self.pattern(q.device))
        B = self.state.batch  # rows [:B] window branch, [B:] full branch
        window = attention(q[:B], k[:B], v[:B], self.pattern(q.device))
        return torch.cat([window, dense(q[B:], k[B:], v[B:])])

    def after_cross_attention(self, out: torch.Tensor, layer: int) -> torch.Tensor:
        if not self.windowed():
            return out
        B, rows = self.state.batch, self.rows.to(out.device)
        if self.dual:
            full = out[B:]
            if self.config.cache_steps > 1:
                self.cache[self.slot(), layer] = full
            return torch.cat([out[:B].index_copy(0, rows, full), full])
        cached = self.cache.get((self.slot(), layer))
        if cached is not None and cached.shape[0] == len(rows) and cached.shape[1:] == out.shape[1:]:
            return out.index_copy(0, rows, cached.to(out.dtype))
        return out
