"""Latents and text embeddings computed once per clip and reused by later runs.

A cache folder is keyed by a fingerprint of the model's VAE, text encoder and tokenizer; inside it,
each clip's entry is keyed by the file (path, size, modification time), its caption and the
preprocessing (buckets, frame rate, text length). Changing any of them computes a new entry; the
old ones stay valid for the runs that use them. Entries are written to a temporary name, then
renamed, so several processes (or a killed run) never leave a half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..data.video_dataset import Bucket, MediaItem, SkipMedia, load_clip


def empty_prompt_entry(max_sequence_length: int) -> str:
    return f"empty_prompt_{max_sequence_length}.safetensors"  # padded to the text length


@dataclass(frozen=True)
class CachedClip:
    path: Path  # the cache entry
    bucket: Bucket
    caption: str = ""  # for text encoded during training (learned words)
    source: MediaItem | None = None  # the file it was encoded from (read again by the binding loss)

    def load(self) -> dict[str, torch.Tensor]:
        return load_file(self.path)


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:20]


@torch.no_grad()
def module_fingerprint(module: torch.nn.Module) -> str:
    """Config plus, per tensor, its name, shape, first and last values and sum: any retraining or
    different checkpoint changes it, without hashing gigabytes of weights byte by byte."""
    config = getattr(module, "config", None) or {}
    config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    config = {k: v for k, v in config.items() if not k.startswith("_")}  # not where it was loaded from
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in module.state_dict().items():
        flat = tensor.detach().reshape(-1)
        sample = torch.cat([flat[:64], flat[-64:]]).float().cpu().numpy().tobytes()
        h.update(
            f"{name}{tuple(tensor.shape)}{tensor.dtype}{float(flat.double().sum()):.10e}".encode() + sample
        )
    return h.hexdigest()[:20]


def model_fingerprint(pipe) -> str:
    tokenizer = pipe.tokenizer
    vocab = sorted(tokenizer.get_vocab().items()) if tokenizer is not None else None
    return _digest(
        module_fingerprint(pipe.vae), module_fingerprint(pipe.text_encoder), vocab, type(pipe.vae).__name__
    )


def clip_key(item: MediaItem, buckets: list[Bucket], fps: float, max_sequence_length: int) -> str:
    stat = item.path.stat() if item.path.exists() else None
    identity = (str(item.path.resolve()), stat.st_size, stat.st_mtime_ns) if stat else (str(item.path),)
    return _digest(identity, item.caption, [str(b) for b in buckets], fps, max_sequence_length)


def write_atomic(tensors: dict, path: Path, metadata: dict | None = None) -> None:
    """A safetensors file written to a temporary name beside ``path``, then renamed."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
    os.replace(tmp, path)


@torch.no_grad()
def encode_frames(pipe, frames: np.ndarray, device) -> torch.Tensor:
    """``(F, H, W, 3)`` uint8 -> normalized latents ``(C, F', H', W')`` in fp32."""
    pixels = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1  # (1, 3, F, H, W)
    z = pipe.vae.encode(pixels.to(device=device, dtype=pipe.vae.dtype)).latent_dist.mode()
    return pipe.normalize_latents(z.float())[0].cpu()


@torch.no_grad()
def build_cache(
    pipe,
    items: list[MediaItem],
    buckets: list[Bucket],
    fps: float,
    max_sequence_length: int,
    cache_dir: Path,
    device,
    process_index: int = 0,
    num_processes: int = 1,
    progress=None,
) -> tuple[Path, list[str]]:
    """Encode the clips this process owns (every ``num_processes``-th) that are not cached yet.

    Returns the cache folder and the problems met, one line per unusable file.
    """
    folder = Path(cache_dir) / model_fingerprint(pipe)
    folder.mkdir(parents=True, exist_ok=True)
    if (
        process_index == 0 and not (folder / empty_prompt_entry(max_sequence_length)).exists()
    ):  # for caption dropout
        embeds, mask = pipe._text_embeddings([""], max_sequence_length, device, pipe.text_encoder.dtype)
        write_atomic({"prompt_embeds": embeds[0].cpu(), "prompt_attention_mask": mask[0].to(torch.uint8).cpu()},
                      folder / empty_prompt_entry(max_sequence_length))  # fmt: skip
    problems = []
    for i, item in enumerate(items):
        if i % num_processes != process_index:
            continue
        entry = folder / f"{clip_key(item, buckets, fps, max_sequence_length)}.safetensors"
        if entry.exists():
            continue
        try:
            frames, bucket = load_clip(item, buckets, fps)
        except SkipMedia as e:
            problems.append(str(e))
            continue
        embeds, mask = pipe._text_embeddings(
            [item.caption], max_sequence_length, device, pipe.text_encoder.dtype
        )
        tensors = {
            "latents": encode_frames(pipe, frames, device),
            "prompt_embeds": embeds[0].cpu(),
            "prompt_attention_mask": mask[0].to(torch.uint8).cpu(),
        }
        write_atomic(tensors, entry, metadata={"bucket": str(bucket), "source": item.path.name})
        if progress is not None:
            progress(item)
    return folder, problems


def collect_cache(
    folder: Path, items: list[MediaItem], buckets: list[Bucket], fps: float, max_sequence_length: int
) -> list[CachedClip]:
    """The cached entries of ``items``, in the items' order (missing ones were unusable)."""
    from safetensors import safe_open

    clips = []
    for item in items:
        entry = folder / f"{clip_key(item, buckets, fps, max_sequence_length)}.safetensors"
        if not entry.exists():
            continue
        with safe_open(entry, "pt") as f:
            meta = f.metadata()
        f_, h, w = (int(v) for v in meta["bucket"].split("x"))
        clips.append(CachedClip(entry, Bucket(f_, h, w), item.caption, item))
    return clips


def warn_skipped(problems: list[str]) -> None:
    """One warning that counts and names the unusable files."""
    if problems:
        warnings.warn(f"skipped {len(problems)} unusable file(s): {'; '.join(problems)}", stacklevel=2)


def sharded_cache(folder: Path, count: int, shard_size: int, key: dict, build) -> dict[str, torch.Tensor]:
    """Tensors of items ``[0, count)`` built ``shard_size`` at a time by ``build(start, end) -> dict`` and
    kept as safetensors shards, each written atomically and tagged with ``key`` (what it was built from,
    plus ``count``). A rerun reuses the shards with the same key and refuses one with another, rather
    than mixing it in. Returns the shards concatenated along the first dimension."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = {k: str(v) for k, v in key.items()} | {"count": str(count)}
    paths = [folder / f"shard_{start:07d}.safetensors" for start in range(0, count, shard_size)]
    for start, path in zip(range(0, count, shard_size), paths):
        if path.exists():
            with safe_open(path, "pt") as f:
                stored = f.metadata() or {}
            changed = sorted(k for k in key.keys() | stored.keys() if stored.get(k) != key.get(k))
            if changed:
                raise ValueError(
                    f"the cache {folder} was built from other {', '.join(changed)}; use another folder"
                )
            continue
        end = min(start + shard_size, count)
        tmp = path.with_suffix(".tmp")
        save_file(build(start, end), tmp, metadata=key)
        os.replace(tmp, path)
        print(f"cache {folder.name}: {end}/{count}", flush=True)
    shards = [load_file(path) for path in paths]
    return {k: torch.cat([shard[k] for shard in shards]) for k in shards[0]}
