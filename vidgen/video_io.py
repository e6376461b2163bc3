"""Reading and writing videos and images: mp4 (H.264), gif, or a folder of PNGs, by extension."""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from pathlib import Path

import imageio.v2 as iio2
import imageio.v3 as iio
import numpy as np
import PIL.Image
import torch
from diffusers.utils import load_image as _diffusers_load_image
from diffusers.utils import load_video as _diffusers_load_video

VIDEO_EXTENSIONS = (".mp4", ".gif")


def _to_uint8_frames(frames) -> np.ndarray:
    """Any of: list of PIL images, ``(F, H, W, 3)`` array (uint8, or float in [0, 1]), ``(F, 3, H, W)``
    tensor in [0, 1]. Returns ``(F, H, W, 3)`` uint8."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().float()
        if frames.ndim == 4 and frames.shape[1] in (1, 3) and frames.shape[-1] not in (1, 3):
            frames = frames.permute(0, 2, 3, 1)
        frames = frames.numpy()
    if isinstance(frames, list | tuple):
        if not frames:
            raise ValueError("frames must not be empty")
        frames = np.stack(
            [np.asarray(f.convert("RGB") if isinstance(f, PIL.Image.Image) else f) for f in frames]
        )
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (F, H, W, 3) RGB; got shape {frames.shape}")
    if frames.dtype != np.uint8:
        frames = (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return frames


def export_to_video(frames, path: str | os.PathLike, fps: float = 8, overwrite: bool = False) -> str:
    """Write ``frames`` to ``path``: ``.mp4`` (H.264), ``.gif``, or a folder of PNGs (no extension).

    An existing ``path`` is never replaced unless ``overwrite=True``; the file is written to a
    temporary name next to it and renamed, so an interrupted write leaves nothing half-written.
    """
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in VIDEO_EXTENSIONS + ("",):
        raise ValueError(
            f"output path must end in .mp4 or .gif, or have no extension (PNG folder); got {path}"
        )
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"output {path} already exists; pass overwrite=True (CLI: --overwrite) to replace it"
        )
    if not math.isfinite(fps) or fps < 0.01:
        raise ValueError(f"fps must be a finite number >= 0.01; got {fps}")
    if ext == "" and path.is_dir() and any(not _is_frame_file(p) for p in path.iterdir()):
        raise FileExistsError(
            f"output folder {path} holds files other than frame_*.png; refusing to replace it"
        )
    frames = _to_uint8_frames(frames)
    if len(frames) == 0:
        raise ValueError("frames must hold at least one frame")
    path.parent.mkdir(parents=True, exist_ok=True)

    if ext == "":
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
        try:
            for i, frame in enumerate(frames):
                PIL.Image.fromarray(frame).save(tmp / f"frame_{i:05d}.png")
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; give it the usual mode
            if path.exists():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            os.replace(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return str(path)

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=ext)
    os.close(fd)
    try:
        if ext == ".mp4":
            _, H, W, _ = frames.shape
            if H % 2 or W % 2:
                raise ValueError(f"H.264 mp4 needs even height and width; got {H}x{W} (write a .gif instead)")
            _write_h264(tmp, frames, fps)
        else:
            iio.imwrite(tmp, frames, extension=".gif", duration=1000.0 / fps, loop=0)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; give it the usual mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return str(path)


def _is_frame_file(p: Path) -> bool:
    return p.is_file() and p.name.startswith("frame_") and p.suffix == ".png"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_h264(path: str, frames: np.ndarray, fps: float) -> None:
    # imageio-ffmpeg's bundled ffmpeg; macro_block_size=1 keeps the exact frame size.
    writer = iio2.get_writer(
        path, format="FFMPEG", fps=fps, codec="libx264", pixelformat="yuv420p", macro_block_size=1, quality=8
    )
    try:
        for frame in frames:
            writer.append_data(frame)
    finally:
        writer.close()


def load_video(path: str | os.PathLike) -> list[PIL.Image.Image]:
    """Read a video file (mp4, gif, ...) or a folder of images into a list of RGB PIL images."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"video {path} does not exist")
    if path.is_dir():
        files = [p for p in path.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")]
        files.sort(key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)])
        if not files:
            raise ValueError(f"video folder {path} holds no .png/.jpg frames")
        return [PIL.Image.open(p).convert("RGB") for p in files]
    return [frame.convert("RGB") for frame in _diffusers_load_video(str(path))]


def load_image(path: str | os.PathLike | PIL.Image.Image) -> PIL.Image.Image:
    """Read an image file (or pass a PIL image through) as RGB."""
    if not isinstance(path, PIL.Image.Image) and not Path(path).exists():
        raise FileNotFoundError(f"image {path} does not exist")
    return _diffusers_load_image(path if isinstance(path, PIL.Image.Image) else str(path))
