"""VDT's unified spatial-temporal masks over the latent grid ``(F, H, W)``: 1 = generate, 0 = given.

One model learns every task from these masks: prediction, backward prediction, interpolation,
unconditional generation, single-frame animation (image-to-video), random frames and spatial-temporal
completion. Training samples them as VDT does (about 20% spatial completion, otherwise uniform over
the temporal tasks) and counts the loss only where the mask is 1.
"""

from __future__ import annotations

import math

import torch

Grid = tuple[int, int, int]
TEMPORAL_TASKS = ("predict", "backward_predict", "interpolate", "unconditional", "animate", "random_frames")


def _ones(grid: Grid) -> torch.Tensor:
    return torch.ones(grid)


def prediction_mask(grid: Grid, given: int) -> torch.Tensor:
    """The first ``given`` latent frames are given."""
    mask = _ones(grid)
    mask[:given] = 0
    return mask


def backward_prediction_mask(grid: Grid, given: int) -> torch.Tensor:
    """The last ``given`` latent frames are given."""
    mask = _ones(grid)
    mask[grid[0] - given :] = 0
    return mask


def interpolation_mask(grid: Grid, every: int) -> torch.Tensor:
    """Every ``every``-th latent frame (from the first) is given."""
    mask = _ones(grid)
    mask[::every] = 0
    return mask


def unconditional_mask(grid: Grid) -> torch.Tensor:
    return _ones(grid)


def single_frame_mask(grid: Grid, index: int = 0) -> torch.Tensor:
    """One latent frame is given (animation; ``index=0`` is image-to-video)."""
    mask = _ones(grid)
    mask[index] = 0
    return mask


def random_frames_mask(grid: Grid, generate_prob: float = 0.8, generator: torch.Generator | None = None):
    """Each latent frame is generated with probability ``generate_prob``, else given."""
    generated = torch.rand(grid[0], generator=generator) < generate_prob
    return generated.float()[:, None, None].expand(grid).clone()


def block_mask_2d(
    height: int,
    width: int,
    area_ratio: float = 0.5,
    generator: torch.Generator | None = None,
    min_block: int = 1,
) -> torch.Tensor:
    """BEiT-style block mask: random rectangles (aspect in [0.3, 1/0.3]) until about ``area_ratio`` of
    the ``height x width`` plane is covered. Returns ``(H, W)`` with 1 inside the blocks."""
    mask = torch.zeros(height, width)
    target = max(1, round(area_ratio * height * width))
    for _ in range(100):
        if mask.sum() >= target:
            break
        remaining = target - int(mask.sum())
        area = _uniform(generator, min_block, max(min_block, remaining))
        aspect = math.exp(_uniform(generator, math.log(0.3), math.log(1 / 0.3)))
        h = min(height, max(1, round(math.sqrt(area * aspect))))
        w = min(width, max(1, round(math.sqrt(area / aspect))))
        top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
        mask[top : top + h, left : left + w] = 1
    return mask


def completion_mask(grid: Grid, area_ratio: float = 0.5, generator: torch.Generator | None = None):
    """Spatial-temporal completion: one block mask copied into frames ``start .. F - end``
    (``start, end ~ U{0..3}``, clipped so at least one frame is masked)."""
    F, H, W = grid
    start = int(torch.randint(0, min(4, F), (1,), generator=generator))
    end = int(torch.randint(0, min(4, F - start), (1,), generator=generator))  # end == 0 keeps the last frame
    mask = torch.zeros(grid)
    mask[start : F - end] = block_mask_2d(H, W, area_ratio, generator)
    return mask


def task_mask(task: str, grid: Grid, given: int = 1, every: int = 2, index: int = 0) -> torch.Tensor:
    """The mask of a named task (``complete`` needs an explicit mask; use :func:`completion_mask`)."""
    builders = {
        "predict": lambda: prediction_mask(grid, given),
        "backward_predict": lambda: backward_prediction_mask(grid, given),
        "interpolate": lambda: interpolation_mask(grid, every),
        "unconditional": lambda: unconditional_mask(grid),
        "animate": lambda: single_frame_mask(grid, index),
    }
    if task not in builders:
        raise ValueError(f"task must be one of {sorted(builders)}; got {task!r}")
    return builders[task]()


def sample_training_mask(
    grid: Grid, generator: torch.Generator | None = None, spatial_prob: float = 0.2
) -> tuple[str, torch.Tensor]:
    """VDT's training sampler: spatial completion with probability ``spatial_prob``, otherwise a
    temporal task chosen uniformly. Returns ``(task, mask)``."""
    F = grid[0]
    if _uniform(generator, 0, 1) < spatial_prob:
        return "complete", completion_mask(grid, generator=generator)
    task = TEMPORAL_TASKS[int(torch.randint(0, len(TEMPORAL_TASKS), (1,), generator=generator))]
    if task == "random_frames":
        return task, random_frames_mask(grid, generator=generator)
    given = int(torch.randint(1, max(2, F), (1,), generator=generator))  # 1 .. F-1 frames
    index = int(torch.randint(0, F, (1,), generator=generator))
    every = int(torch.randint(2, max(3, F), (1,), generator=generator))
    return task, task_mask(task, grid, given=given, every=every, index=index)


def sample_default_training_mask(
    grid: Grid, generator: torch.Generator | None = None, t2v: float = 0.35, i2v: float = 0.15
) -> torch.Tensor:
    """The default model's mix: text-to-video (all generated) with probability ``t2v``, image-to-video
    (frame 0 given) with ``i2v``, else :func:`sample_training_mask` (VDT's sampler)."""
    r = _uniform(generator, 0, 1)
    if r < t2v:
        return _ones(grid)
    if r < t2v + i2v:
        return single_frame_mask(grid)
    return sample_training_mask(grid, generator)[1]


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the positions where ``mask`` is 1 only (mask broadcasts over channels)."""
    mask = mask.expand_as(prediction)
    return ((prediction - target) ** 2 * mask).sum() / mask.sum().clamp_min(1)


def _uniform(generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))
