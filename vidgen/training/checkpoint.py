"""Atomic, resumable training checkpoints: tensors in safetensors, optimizer states through
``torch.load(weights_only=True)``, the step and small metadata as JSON."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def save_checkpoint(
    folder: Path, step: int, tensors: dict, optimizers: dict, extra: dict | None = None, keep: int = 2
) -> Path:
    """Write ``folder/step_NNNNNN`` through a temporary folder and a rename; keep the last ``keep``."""
    folder = Path(folder)
    final, tmp = folder / f"step_{step:06d}", folder / f".tmp_step_{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp / "weights.safetensors")
    for name, optimizer in optimizers.items():
        torch.save(optimizer.state_dict(), tmp / f"{name}.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, **(extra or {})}))
    os.replace(tmp, final)
    for old in sorted(folder.glob("step_*"))[:-keep]:
        shutil.rmtree(old)
    return final


def load_latest_checkpoint(
    folder: Path, optimizers: dict, args: dict | None = None
) -> tuple[int, dict | None, dict]:
    """``(step, tensors, state)`` of the newest checkpoint, with the optimizers' states restored in
    place; ``(0, None, {})`` when there is none. With ``args`` (the run's settings), first refuse a
    checkpoint saved with other settings (:func:`check_resume`)."""
    done = sorted(Path(folder).glob("step_*"))
    if not done:
        return 0, None, {}
    last = done[-1]
    state = json.loads((last / "state.json").read_text())
    if args is not None:
        check_resume(state.get("args"), args)
    for name, optimizer in optimizers.items():
        optimizer.load_state_dict(torch.load(last / f"{name}.pt", weights_only=True))
    return state["step"], load_file(last / "weights.safetensors"), state


def prefixed(prefix: str, module: torch.nn.Module) -> dict:
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}


def unprefixed(prefix: str, tensors: dict) -> dict:
    return {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def save_model(model, folder: Path) -> None:
    """``save_pretrained`` through a temporary folder, without the run's paths in the config."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    config = tmp / "config.json"
    data = json.loads(config.read_text())
    data.pop("_name_or_path", None)
    config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def average_models(folders, weights=None):
    """The weighted mean of the parameters of several trained models of one architecture (a model
    soup), as a model of that class. ``folders``: diffusers model folders (``config.json`` +
    safetensors) with the same config; ``weights``: one per folder, summing to 1 (default: equal).
    The mean is taken in float32; the result is float32."""
    folders = [Path(f) for f in folders]
    if len(folders) < 2:
        raise ValueError(f"folders: average at least two models; got {len(folders)}")
    weights = [1.0 / len(folders)] * len(folders) if weights is None else [float(w) for w in weights]
    if len(weights) != len(folders) or abs(sum(weights) - 1.0) > 1e-6:
        raise ValueError(f"weights: one per folder ({len(folders)}), summing to 1; got {weights}")
    configs = [_architecture(f) for f in folders]
    for f, c in zip(folders[1:], configs[1:]):
        if c != configs[0]:
            keys = sorted(k for k in set(c) | set(configs[0]) if c.get(k) != configs[0].get(k))
            raise ValueError(
                f"folders: {f} is another architecture than {folders[0]} ({', '.join(keys)} differ)"
            )
    import vidgen  # the model classes, named by the folders' configs

    model_class = getattr(vidgen, configs[0]["_class_name"])
    models = [model_class.from_pretrained(f, torch_dtype=torch.float32) for f in folders]
    states = [m.state_dict() for m in models]
    mean = {}
    for k, first in states[0].items():
        if first.is_floating_point():
            mean[k] = sum(w * s[k].float() for w, s in zip(weights, states))
        elif all(torch.equal(first, s[k]) for s in states[1:]):  # integer buffers: kept, not averaged
            mean[k] = first
        else:
            raise ValueError(
                f"folders: the models' {k} (not floating point) differ, so it cannot be averaged"
            )
    models[0].load_state_dict(mean)
    return models[0]


def _architecture(folder: Path) -> dict:
    """A model folder's config without the keys that name where and by which version it was saved."""
    config = json.loads((Path(folder) / "config.json").read_text())
    return {k: v for k, v in config.items() if k not in ("_name_or_path", "_diffusers_version")}


def save_pipeline(pipe, folder: Path) -> None:
    """``save_pretrained`` of a whole pipeline through a temporary folder, without the run's paths in
    the components' configs."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp)
    for config in tmp.glob("*/config.json"):
        data = json.loads(config.read_text())
        data.pop("_name_or_path", None)
        config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def append_csv(path: Path, row: dict) -> None:
    """Append ``row`` to a CSV log, writing the header first when the file is new."""
    path = Path(path)
    new = not path.exists()
    with path.open("a") as f:
        if new:
            f.write(",".join(row) + "\n")
        f.write(",".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in row.values()) + "\n")


def check_resume(
    saved: dict | None, current: dict, may_change: tuple = ("steps", "checkpoint_every")
) -> None:
    """Refuse to resume a run whose settings changed (other than ``may_change``): the checkpoint's
    weights would silently continue another recipe. ``saved``: the settings stored with the checkpoint."""
    if saved is None:
        return
    changed = sorted(
        k for k in set(saved) | set(current) if k not in may_change and saved.get(k) != current.get(k)
    )
    if changed:
        raise ValueError(
            f"the run folder holds a checkpoint made with other settings ({', '.join(changed)}); "
            "use another --out, or the same settings"
        )
