"""The Shapes world: procedurally generated clips of colored shapes moving on black, with captions
and per-frame ground truth (centres, velocities). The default model is trained and evaluated on it.

Native clip: 64x64 pixels, 17 frames, 8 fps. Any size and length can be rendered: sizes and speeds
scale with ``min(height, width) / 64``. One or two objects per clip, rendered with hard edges, never
overlapping in the native clip (their bounding boxes stay at least 2 pixels apart).

- shapes: ``circle`` (radius r), ``square`` (side 2r), ``triangle`` (upward, base 2r, height 2r);
  ``r ~ U[6, 9]`` pixels at 64x64, constant per object;
- motion: ``moves left|right|up|down`` at a constant ``U[1.5, 2.5]`` px/frame, bouncing elastically
  off the borders, with a start that keeps the stated direction for at least the first 8 frames;
  or ``stays still``;
- caption: ``a {color} {shape} moves {direction}`` / ``a {color} {shape} stays still``, two objects
  joined by `` and ``.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass

import numpy as np
import torch

NATIVE_SIZE = 64
NATIVE_FRAMES = 17
FPS = 8
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
    "magenta": (220, 60, 220),
    "cyan": (40, 210, 220),
    "white": (240, 240, 240),
}
# Colors the world never shows in training: concepts to teach a trained model (the LoRA benchmark).
# Captions say "an orange circle ..."; rendering and evaluation know them, sampling does not.
NEW_COLORS: dict[str, tuple[int, int, int]] = {"orange": (255, 140, 0)}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS: dict[str, tuple[float, float]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
MOTIONS = (*DIRECTIONS, "still")
# A direction the world never shows in training ("a red circle moves diagonally": towards the bottom
# right), for teaching a trained model; like NEW_COLORS, rendering and captions know it, sampling does not.
NEW_DIRECTIONS: dict[str, tuple[float, float]] = {"diagonally": (0.5**0.5, 0.5**0.5)}
RADIUS_RANGE = (6.0, 9.0)  # pixels at 64x64
# Sizes the world never shows in training ("a big red circle ..."), for teaching a trained model.
RADIUS_RANGES = {"normal": RADIUS_RANGE, "big": (13.0, 15.0)}
SPEED_RANGE = (1.5, 2.5)  # pixels per frame at 64x64
DIRECTION_HOLDS_FRAMES = 8
# Seeds at or above this value are for evaluation only; training draws below it.
EVAL_SEED_OFFSET = 1 << 30


@dataclass(frozen=True)
class ShapeObject:
    """What a caption says about one object."""

    color: str
    shape: str
    motion: str  # a direction, or "still"
    size: str = "normal"  # "big" only for taught concepts; the world's captions never say it

    def __post_init__(self):
        motions = (*MOTIONS, *NEW_DIRECTIONS)
        known = self.color in COLORS | NEW_COLORS and self.shape in SHAPES and self.motion in motions
        if not known or self.size not in RADIUS_RANGES:
            raise ValueError(
                f"unknown object {self}: colors {list(COLORS | NEW_COLORS)}, shapes {SHAPES}, motions {motions}, "
                f"sizes {list(RADIUS_RANGES)}"
            )

    @property
    def caption(self) -> str:
        verb = "stays still" if self.motion == "still" else f"moves {self.motion}"
        words = ([] if self.size == "normal" else [self.size]) + [self.color]
        article = "an" if words[0][0] in "aeiou" else "a"
        return " ".join([article, *words, self.shape, verb])


@dataclass
class Clip:
    """A rendered clip and its ground truth. Centres are (x, y) in pixels, +y pointing down."""

    frames: np.ndarray  # (F, H, W, 3) uint8
    caption: str
    objects: tuple[ShapeObject, ...]
    centers: np.ndarray  # (F, K, 2) float
    velocities: np.ndarray  # (F, K, 2) float, pixels per frame
    radii: np.ndarray  # (K,) float


def caption_of(objects) -> str:
    return " and ".join(o.caption for o in objects)


def parse_caption(caption: str) -> tuple[ShapeObject, ...]:
    """Inverse of :func:`caption_of`; raises ``ValueError`` on anything else."""
    objects = []
    for part in caption.strip().split(" and "):
        words = part.split()
        size = "normal"
        if len(words) == 6 and words[1] in RADIUS_RANGES and words[1] != "normal":
            size = words.pop(1)
        if len(words) == 5 and words[0] in ("a", "an") and words[3] == "moves":
            objects.append(ShapeObject(words[1], words[2], words[4], size))
        elif len(words) == 5 and words[0] in ("a", "an") and words[3:] == ["stays", "still"]:
            objects.append(ShapeObject(words[1], words[2], "still", size))
        else:
            raise ValueError(f"not a Shapes-world caption: {caption!r}")
    return tuple(objects)


def all_single_objects() -> list[ShapeObject]:
    return [ShapeObject(c, s, m) for c, s, m in itertools.product(COLORS, SHAPES, MOTIONS)]


def is_held_out(objects) -> bool:
    """Two-object combinations reserved for evaluation (about one in eight, fixed by a hash of the
    caption); every single-object caption is seen in training (evaluation then uses unseen seeds)."""
    if len(objects) < 2:
        return False
    digest = hashlib.sha256(caption_of(sorted(objects, key=lambda o: o.caption)).encode()).digest()
    return digest[0] % 8 == 0


def sample_objects(rng: np.random.Generator, num_objects: int | None = None, held_out: bool = False):
    """Random objects (distinct colors). ``held_out`` picks from the evaluation-only combinations,
    otherwise from the training ones."""
    singles = all_single_objects()
    num_objects = num_objects or int(rng.integers(1, 3))
    if num_objects == 1:
        return (singles[rng.integers(len(singles))],)
    while True:
        a, b = (singles[i] for i in rng.choice(len(singles), 2, replace=False))
        if a.color != b.color and is_held_out((a, b)) == held_out:
            return (a, b)


def _trajectory(start, velocity, radius, size_xy, num_frames):
    """Positions and velocities with elastic bounces off the borders: ``(F, 2)`` each."""
    pos, vel = np.array(start, float), np.array(velocity, float)
    low, high = radius, np.array(size_xy, float) - radius
    positions, velocities = [], []
    for _ in range(num_frames):
        positions.append(pos.copy())
        velocities.append(vel.copy())
        pos = pos + vel
        for axis in range(2):
            if pos[axis] < low:
                pos[axis], vel[axis] = 2 * low - pos[axis], -vel[axis]
            elif pos[axis] > high[axis]:
                pos[axis], vel[axis] = 2 * high[axis] - pos[axis], -vel[axis]
    return np.stack(positions), np.stack(velocities)


def _start(rng, motion, radius, speed, size_xy):
    """A start position from which the stated direction holds for the first frames."""
    start = np.array([rng.uniform(radius, s - radius) for s in size_xy])
    if motion in DIRECTIONS:
        axes = [0 if DIRECTIONS[motion][0] else 1]
    elif motion in NEW_DIRECTIONS:
        axes = [0, 1]
    else:
        return start
    direction = (DIRECTIONS | NEW_DIRECTIONS)[motion]
    for axis in axes:
        travel = abs(direction[axis]) * speed * DIRECTION_HOLDS_FRAMES
        low, high = radius, size_xy[axis] - radius
        # Leave room to travel `travel` pixels in the stated direction before the first bounce.
        start[axis] = (
            rng.uniform(low, high - travel) if direction[axis] > 0 else rng.uniform(low + travel, high)
        )
    return start


def _boxes_meet(c1, r1, c2, r2, margin: float) -> bool:
    return bool(np.any(np.all(np.abs(c1 - c2) <= r1 + r2 + margin, axis=-1)))


def render_masks(objects, centers, radii, height, width) -> np.ndarray:
    """Boolean ``(F, K, H, W)`` masks of each object in each frame (pixel centres inside the shape)."""
    y, x = np.mgrid[0:height, 0:width] + 0.5
    masks = np.zeros((len(centers), len(objects), height, width), bool)
    for k, (obj, r) in enumerate(zip(objects, radii)):
        for f, (cx, cy) in enumerate(centers[:, k]):
            if obj.shape == "circle":
                inside = (x - cx) ** 2 + (y - cy) ** 2 <= r * r
            elif obj.shape == "square":
                inside = (np.abs(x - cx) <= r) & (np.abs(y - cy) <= r)
            else:  # upward triangle: apex at (cx, cy - r), base 2r wide at y = cy + r
                inside = (y >= cy - r) & (y <= cy + r) & (np.abs(x - cx) <= (y - (cy - r)) / 2)
            masks[f, k] = inside
    return masks


def render_clip(
    objects,
    seed: int,
    height: int = NATIVE_SIZE,
    width: int = NATIVE_SIZE,
    num_frames: int = NATIVE_FRAMES,
    colors: dict | None = None,
) -> Clip:
    """Render ``objects`` (from a caption) with sizes, speeds and starts drawn from ``seed``.

    ``colors`` maps color names to RGB instead of the world's palette (e.g. random colors, so that a VAE
    learns colors beyond the world's)."""
    objects = tuple(objects)
    if not 1 <= len(objects) <= 2:
        raise ValueError(f"a clip has one or two objects; got {len(objects)}")
    rng = np.random.default_rng(seed)
    scale = min(height, width) / NATIVE_SIZE
    size_xy = (width, height)
    radii = np.array([rng.uniform(*RADIUS_RANGES[o.size]) * scale for o in objects])
    speeds = [0.0 if o.motion == "still" else rng.uniform(*SPEED_RANGE) * scale for o in objects]
    check_frames = min(num_frames, NATIVE_FRAMES)
    for _ in range(1000):  # rejection sampling until the objects keep apart in the native clip
        paths = [
            _trajectory(
                _start(rng, o.motion, r, s, size_xy),
                np.array((DIRECTIONS | NEW_DIRECTIONS).get(o.motion, (0, 0)), float) * s,
                r,
                size_xy,
                num_frames,
            )
            for o, r, s in zip(objects, radii, speeds)
        ]
        if len(objects) == 1 or not _boxes_meet(
            paths[0][0][:check_frames], radii[0], paths[1][0][:check_frames], radii[1], margin=2 * scale
        ):
            break
    else:
        raise RuntimeError(f"could not place {caption_of(objects)} without overlap (seed {seed})")
    centers = np.stack([p for p, _ in paths], axis=1)  # (F, K, 2)
    velocities = np.stack([v for _, v in paths], axis=1)
    frames = np.zeros((num_frames, height, width, 3), np.uint8)
    masks = render_masks(objects, centers, radii, height, width)
    for k, obj in enumerate(objects):
        frames[masks[:, k]] = (colors or COLORS | NEW_COLORS)[obj.color]
    return Clip(frames, caption_of(objects), objects, centers, velocities, radii)


def sample_clip(seed: int, held_out: bool = False, **render_kwargs) -> Clip:
    """A random clip: objects and rendering both drawn from ``seed``."""
    rng = np.random.default_rng([seed, 0x5EED])
    return render_clip(sample_objects(rng, held_out=held_out), seed, **render_kwargs)


def render_training_batch(
    seeds, window: slice | None = None, random_colors: float = 0.0, size: int = NATIVE_SIZE
) -> tuple[torch.Tensor, list[str], np.ndarray]:
    """Training clips of ``sample_clip(seed)``: pixels ``(B, 3, F, size, size)`` in [-1, 1], captions,
    object masks ``(B, F, size, size)``; ``window`` selects frames. ``random_colors``: the share of clips whose
    objects take random colors (one bright channel at least), for autoencoders that must decode any color.
    A seed gives the same scene at every ``size`` (positions, sizes and speeds scale with it)."""
    clips = []
    for i, s in enumerate(seeds):
        colors = None
        if (i + 0.5) / len(seeds) < random_colors:
            rng = np.random.default_rng([int(s), 0xC010])
            colors = {}
            for name in COLORS:
                rgb = rng.integers(0, 256, 3)
                rgb[rng.integers(3)] = rng.integers(120, 256)  # at least one bright channel
                colors[name] = tuple(int(v) for v in rgb)
        clips.append(sample_clip(int(s), colors=colors, height=size, width=size))
    frames = np.stack([c.frames for c in clips])  # (B, 17, H, W, 3)
    masks = np.stack([c.frames.any(-1) for c in clips])  # (B, 17, H, W)
    if window is not None:
        frames, masks = frames[:, window], masks[:, window]
    pixels = torch.from_numpy(frames).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    return pixels, [c.caption for c in clips], masks


def object_tokens(masks: np.ndarray, temporal: int, spatial: int) -> torch.Tensor:
    """Which latent tokens an object touches: pixel masks ``(B, F, H, W)`` (``F = k * temporal + 1``) ->
    bool ``(B, k + 1, H / spatial, W / spatial)``. Latent frame 0 covers pixel frame 0 and latent frame
    ``j`` pixel frames ``(j - 1) * temporal + 1 .. j * temporal`` (a causal VAE)."""
    m = torch.from_numpy(masks).float()
    B, F, H, W = m.shape
    rest = m[:, 1:].reshape(B, (F - 1) // temporal, temporal, H, W).amax(2)
    m = torch.cat([m[:, :1], rest], dim=1)  # (B, k + 1, H, W)
    return torch.nn.functional.max_pool2d(m, spatial) > 0
