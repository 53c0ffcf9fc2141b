"""Safe, atomic checkpoint I/O and the model-config check used when loading."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

#: config keys that say where weights live, not what the model is: ignored when comparing configs.
LOCATION_KEYS = frozenset({"cache_dir", "local_files_only"})
#: weight sources compared by their last path component, so that moving a weight folder is not a new model.
SOURCE_KEYS = frozenset({"checkpoint_path", "pretrained"})


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: unreadable, truncated, or made for another model configuration."""


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """Write to a temporary file in the target folder, fsync, then rename over ``path``.

    A crash mid-write leaves the previous file intact; ``os.replace`` is atomic on POSIX and Windows.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; a checkpoint gets the usual permissions
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def safe_torch_load(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with an error that names the file when it is missing or damaged."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, garbage bytes, or pickled code that weights_only refuses
        raise CheckpointError(
            f"cannot read checkpoint {path} ({path.stat().st_size} bytes): {type(err).__name__}: {err}. "
            "The file is truncated, corrupted, or holds objects that are unsafe to unpickle."
        ) from err


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O that writes atomically and loads with ``weights_only=True``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path: _PATH, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        return safe_torch_load(path, map_location=map_location or "cpu")


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: d}


def config_differences(saved: dict, current: dict) -> list[str]:
    """Dotted keys whose values differ between two model configs, ignoring where weights are stored."""
    a, b = _flatten(saved), _flatten(current)
    diffs = []
    for key in sorted(set(a) | set(b)):
        leaf = key.rsplit(".", 1)[-1]
        if leaf in LOCATION_KEYS:
            continue
        va, vb = a.get(key, "<absent>"), b.get(key, "<absent>")
        if leaf in SOURCE_KEYS and isinstance(va, str) and isinstance(vb, str):
            same = Path(va.rstrip("/")).name == Path(vb.rstrip("/")).name
        else:
            same = va == vb
        if not same:
            diffs.append(f"{key}: checkpoint={va!r} current={vb!r}")
    return diffs
