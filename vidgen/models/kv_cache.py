"""Keys and values of past frames for chunk-by-chunk (autoregressive) inference."""

from __future__ import annotations

import copy

import torch


class KVCache:
    """Per-block keys and values of already generated frames.

    Each block stores its self-attention keys and values *after* RoPE, frame-major, as
    ``(B', F, S, H, D)``: ``S`` tokens per frame (``H*W`` for joint spatio-temporal attention, ``1``
    for the per-position temporal attention of factorized blocks). Alongside, it keeps the absolute
    index of every cached frame, so block-causal masks and RoPE positions stay correct after eviction.

    ``max_frames`` bounds the cache (``None``: unbounded). When an append overflows it, the oldest
    frames are evicted, except the first ``num_pinned_frames`` frames ever written, which stay
    ("attention sink"). After any append the cache holds the pinned frames followed by the most
    recent ``max_frames - num_pinned_frames`` frames, in order.
    """

    def __init__(self, num_layers: int, max_frames: int | None = None, num_pinned_frames: int = 0):
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1; got {num_layers}")
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"max_frames must be >= 1 or None; got {max_frames}")
        if num_pinned_frames < 0 or (max_frames is not None and num_pinned_frames >= max_frames):
            raise ValueError(
                f"num_pinned_frames must be >= 0 and < max_frames ({max_frames}); got {num_pinned_frames}"
            )
        self.num_layers = num_layers
        self.max_frames = max_frames
        self.num_pinned_frames = num_pinned_frames
        self.reset()

    def reset(self) -> None:
        self._k: list[torch.Tensor | None] = [None] * self.num_layers
        self._v: list[torch.Tensor | None] = [None] * self.num_layers
        self._frames: list[torch.Tensor | None] = [None] * self.num_layers

    def snapshot(self) -> KVCache:
        """An independent copy at this point of the rollout, without copying tensors: the cache never
        writes a tensor in place (appends and evictions build new ones), so the two can diverge."""
        other = copy.copy(self)
        other._k, other._v, other._frames = list(self._k), list(self._v), list(self._frames)
        return other

    def __len__(self) -> int:
        """Number of cached frames (of block 0)."""
        return 0 if self._frames[0] is None else len(self._frames[0])

    @property
    def frame_indices(self) -> torch.Tensor | None:
        """Absolute indices of the cached frames, in cache order (of block 0)."""
        return self._frames[0]

    def get(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """``(k, v, frames)`` of block ``layer``: ``k, v`` as ``(B', F*S, H, D)``, ``frames`` as ``(F,)``."""
        if self._k[layer] is None:
            return None
        k, v = self._k[layer], self._v[layer]
        return k.flatten(1, 2), v.flatten(1, 2), self._frames[layer]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor, frames: torch.Tensor) -> None:
        """Append ``k, v`` of shape ``(B', F, S, H, D)`` for absolute frame indices ``frames`` ``(F,)``."""
        if k.shape != v.shape or k.ndim != 5 or k.shape[1] != len(frames):
            raise ValueError(f"k and v must be (B', F, S, H, D) with F = len(frames); got {tuple(k.shape)}")
        if self._frames[layer] is not None and int(frames[0]) != int(self._frames[layer][-1]) + 1:
            raise ValueError(
                f"frames must continue the cache: expected first frame {int(self._frames[layer][-1]) + 1}, "
                f"got {int(frames[0])} (pass frame_offset)"
            )
        if self._k[layer] is None:
            self._k[layer], self._v[layer], self._frames[layer] = k, v, frames
        else:
            self._k[layer] = torch.cat([self._k[layer], k], dim=1)
            self._v[layer] = torch.cat([self._v[layer], v], dim=1)
            self._frames[layer] = torch.cat([self._frames[layer], frames])
        self.evict(layer)

    def evict(self, layer: int) -> None:
        """Drop the oldest unpinned frames of block ``layer`` beyond ``max_frames``."""
        n = 0 if self._frames[layer] is None else len(self._frames[layer])
        if self.max_frames is None or n <= self.max_frames:
            return
        keep = torch.cat(
            [
                torch.arange(self.num_pinned_frames),
                torch.arange(n - (self.max_frames - self.num_pinned_frames), n),
            ]
        ).to(self._frames[layer].device)
        self._k[layer] = self._k[layer].index_select(1, keep)
        self._v[layer] = self._v[layer].index_select(1, keep)
        self._frames[layer] = self._frames[layer].index_select(0, keep)
