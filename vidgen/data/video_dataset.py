"""Training media for fine-tuning: discovery, frame sampling, and (frames, height, width) buckets.

Two layouts are read:

- a folder of videos (``.mp4 .webm .mov .mkv .avi .gif``) and images (``.png .jpg .jpeg .webp .bmp``,
  read as one-frame clips), each with a same-stem ``.txt`` caption, in any sub-folder;
- a ``metadata.csv`` / ``metadata.jsonl`` (the file itself, or a folder holding one) with a video
  column and a caption column; relative paths are relative to the metadata file.

A clip is sampled at a target frame rate, resized so that it covers the bucket, and center-cropped.
Images take one-frame buckets and videos the longer ones: the longest the clip can fill, then the
closest in aspect ratio, then the largest. A video shorter than every video bucket is skipped.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif")
METADATA_NAMES = ("metadata.csv", "metadata.jsonl")
VIDEO_COLUMNS = ("video", "file_name", "path", "media_path", "image")
CAPTION_COLUMNS = ("caption", "prompt", "text")


class SkipMedia(Exception):
    """A file that cannot be used (unreadable, too short, no caption); the message says why."""


@dataclass(frozen=True)
class MediaItem:
    path: Path
    caption: str

    @property
    def is_image(self) -> bool:
        return self.path.suffix.lower() in IMAGE_EXTENSIONS


@dataclass(frozen=True, order=True)
class Bucket:
    frames: int
    height: int
    width: int

    def __str__(self) -> str:
        return f"{self.frames}x{self.height}x{self.width}"


def parse_buckets(specs, temporal_stride: int, spatial_stride: int) -> list[Bucket]:
    """``["17x64x64", [1, 64, 64], ...]`` -> buckets; each must fit the VAE's strides."""
    if not specs:
        raise ValueError("data.buckets must list at least one FRAMESxHEIGHTxWIDTH bucket")
    buckets = []
    for spec in specs:
        try:
            f, h, w = (int(v) for v in (spec.lower().split("x") if isinstance(spec, str) else spec))
        except (ValueError, TypeError, AttributeError):
            raise ValueError(f"data.buckets: {spec!r} is not FRAMESxHEIGHTxWIDTH, e.g. '17x64x64'") from None
        if f < 1 or (f - 1) % temporal_stride:
            raise ValueError(
                f"data.buckets: {spec!r} has {f} frames; frames must be k*{temporal_stride} + 1 (VAE temporal "
                f"stride {temporal_stride}), try {max(0, round((f - 1) / temporal_stride)) * temporal_stride + 1}"
            )
        if min(h, w) < spatial_stride or h % spatial_stride or w % spatial_stride:
            raise ValueError(
                f"data.buckets: {spec!r}: height and width must be positive multiples of {spatial_stride} "
                "(VAE spatial stride x patch size)"
            )
        buckets.append(Bucket(f, h, w))
    return sorted(set(buckets))


# --------------------------------------------------------------------------------------------------
# Discovery.
def discover_media(
    path: str | Path, video_column: str | None = None, caption_column: str | None = None
) -> tuple[list[MediaItem], list[str]]:
    """Items with captions, and the problems met (one line each) for files that cannot be used."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data.path {path} does not exist")
    if path.is_dir():
        metadata = [path / name for name in METADATA_NAMES if (path / name).exists()]
        if metadata:
            path = metadata[0]
    if path.is_file():
        return _read_metadata(path, video_column, caption_column)
    items, problems = [], []
    media = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)
    for p in media:
        caption_file = p.with_suffix(".txt")
        if not caption_file.exists():
            problems.append(f"{p.name}: no caption file {caption_file.name}")
            continue
        try:
            caption = caption_file.read_text(encoding="utf-8").strip()
        except UnicodeDecodeError:
            problems.append(f"{p.name}: caption file {caption_file.name} is not UTF-8 text")
            continue
        if not caption:
            problems.append(f"{p.name}: empty caption")
            continue
        items.append(MediaItem(p, caption))
    return items, problems


def _read_metadata(path: Path, video_column, caption_column) -> tuple[list[MediaItem], list[str]]:
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    elif path.suffix.lower() in (".jsonl", ".json"):
        text = path.read_text(encoding="utf-8")
        try:
            rows = json.loads(text) if path.suffix.lower() == ".json" else [
                json.loads(line) for line in text.splitlines() if line.strip()
            ]  # fmt: skip
        except json.JSONDecodeError as e:
            raise ValueError(f"data.path {path}: not valid JSON at line {e.lineno}: {e.msg}") from None
    else:
        raise ValueError(f"data.path {path}: metadata must be .csv, .jsonl or .json")
    if not rows:
        raise ValueError(f"data.path {path}: the metadata file has no rows")
    columns = list(rows[0])
    video_column = video_column or next((c for c in VIDEO_COLUMNS if c in columns), None)
    caption_column = caption_column or next((c for c in CAPTION_COLUMNS if c in columns), None)
    for name, column, choices in (
        ("data.video_column", video_column, VIDEO_COLUMNS),
        ("data.caption_column", caption_column, CAPTION_COLUMNS),
    ):
        if column is None or column not in columns:
            raise ValueError(
                f"{name}: {path.name} has columns {columns}; name the column (default: one of {list(choices)})"
            )
    items, problems = [], []
    for i, row in enumerate(rows):
        media, caption = str(row.get(video_column) or ""), str(row.get(caption_column) or "").strip()
        if not media or not caption:
            problems.append(f"{path.name} row {i + 1}: empty {video_column if not media else caption_column}")
            continue
        media_path = Path(media) if Path(media).is_absolute() else path.parent / media
        items.append(MediaItem(media_path, caption))
    return items, problems


# --------------------------------------------------------------------------------------------------
# Reading and preprocessing.
def read_frames(path: Path, fps: float, max_frames: int) -> np.ndarray:
    """``(F, H, W, 3)`` uint8 frames sampled at ``fps`` (at most ``max_frames``), decoded as a stream so
    that a long video never sits whole in memory. An unknown source rate counts as ``fps``."""
    import imageio.v3 as iio

    try:
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            return np.asarray(PIL.Image.open(path).convert("RGB"))[None]
        meta = iio.immeta(path)
        source = meta.get("fps")
        if not source and path.suffix.lower() == ".gif" and meta.get("duration"):
            source = 1000.0 / float(meta["duration"])  # per-frame duration in milliseconds
        source = float(source) if source and math.isfinite(float(source)) and float(source) > 0 else fps
        step, kept = source / fps, []
        for i, frame in enumerate(iio.imiter(path)):
            while len(kept) < max_frames and round(len(kept) * step) == i:
                kept.append(np.asarray(frame))
            if len(kept) == max_frames:
                break
    except Exception as e:  # any decoder error: the file is unusable
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SkipMedia(f"{path.name}: unreadable ({reason})") from None
    if not kept:
        raise SkipMedia(f"{path.name}: no frames")
    frames = np.stack(kept)
    if frames.ndim == 3:  # grayscale
        frames = frames[..., None]
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, -1)
    return frames[..., :3].astype(np.uint8)


def choose_bucket(buckets: list[Bucket], available_frames: int, height: int, width: int) -> Bucket | None:
    fitting = [b for b in buckets if b.frames <= available_frames]
    if not fitting:
        return None
    longest = max(b.frames for b in fitting)
    aspect = math.log(width / height)
    return min(
        (b for b in fitting if b.frames == longest),
        key=lambda b: (round(abs(math.log(b.width / b.height) - aspect), 6), -b.height * b.width),
    )


def load_clip(item: MediaItem, buckets: list[Bucket], fps: float) -> tuple[np.ndarray, Bucket]:
    """``(F, H, W, 3)`` uint8 frames sampled at ``fps``, resized and center-cropped to their bucket."""
    # Images take one-frame buckets; videos take the longer ones (their first frame when all are one-frame).
    if item.is_image:
        buckets = [b for b in buckets if b.frames == 1]
        if not buckets:
            raise SkipMedia(f"{item.path.name}: an image needs a one-frame bucket (1xHxW) in data.buckets")
    elif any(b.frames > 1 for b in buckets):
        buckets = [b for b in buckets if b.frames > 1]
    frames = read_frames(item.path, fps, max(b.frames for b in buckets))
    available = len(frames)
    bucket = choose_bucket(buckets, available, frames.shape[1], frames.shape[2])
    if bucket is None:
        shortest = min(b.frames for b in buckets)
        raise SkipMedia(
            f"{item.path.name}: too short ({available} frames at {fps:g} fps; the shortest video bucket has {shortest})"
        )
    return np.stack(
        [resize_center_crop(f, bucket.height, bucket.width) for f in frames[: bucket.frames]]
    ), bucket


def resize_center_crop(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    h, w = frame.shape[:2]
    scale = max(height / h, width / w)
    size = (max(width, round(w * scale)), max(height, round(h * scale)))
    image = PIL.Image.fromarray(frame).resize(size, PIL.Image.BICUBIC if scale > 1 else PIL.Image.BOX)
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    return np.asarray(image.crop((left, top, left + width, top + height)))
