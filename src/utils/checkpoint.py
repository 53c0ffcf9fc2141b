"""Safe, atomic checkpoint I/O, the model-config check used when loading, and depthforge's user-facing errors."""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import torch
from hydra.errors import CompactHydraException
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

#: config keys that say where weights live, not what the model is: ignored when comparing configs.
LOCATION_KEYS = frozenset({"cache_dir", "local_files_only"})
#: weight sources compared by their last path component, so that moving a weight folder is not a new model.
SOURCE_KEYS = frozenset({"checkpoint_path", "pretrained"})


class UserError(CompactHydraException):
    """Base of depthforge's errors whose message is complete for the user: what is wrong, where, and the fix.

    Hydra's entry points print only ``str()`` of a :class:`~hydra.errors.CompactHydraException` and exit with
    status 1 (no traceback wall; ``HYDRA_FULL_ERROR=1`` still shows it). ``repr()`` returns the same readable
    text, because Hydra's ``InstantiationException`` embeds ``repr(cause)``: without this a multi-line message
    would reach the user as one line with literal ``\\n``.
    """

    def __repr__(self) -> str:
        return f"{type(self).__name__}: {self}"


class CheckpointError(RuntimeError, UserError):
    """A checkpoint that cannot be used: unreadable, truncated, or made for another model configuration."""


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file that replaces ``path`` only once fully written: temporary file in the target folder, fsync,
    then ``os.replace`` (atomic on POSIX and Windows). An error or a crash mid-write leaves the previous file (or
    none) and no temporary file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; the result gets the usual permissions
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`atomic_write`: a crash mid-write leaves the previous file intact."""
    with atomic_write(path) as f:
        torch.save(obj, f)


#: the first bytes of a torch.save zip archive and of a pickle (the legacy torch.save format)
_ZIP_MAGIC, _PICKLE_MAGIC = b"PK\x03\x04", b"\x80"
#: torch's advice for a file that safe loading refuses; never forwarded (the file's origin is unknown)
_UNSAFE_ADVICE = re.compile(r"weights_only|safe_globals|trust", re.IGNORECASE)


def _first_sentence(err: BaseException) -> str:
    """``Type: first sentence`` of an exception, dropping any sentence that advises loading unsafely."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    sentences = [s for s in re.split(r"(?<=\.)\s+", text) if s and not _UNSAFE_ADVICE.search(s)]
    first = sentences[0].rstrip(".") if sentences else ""
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def torch_load_problem(path: Path, err: BaseException) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, in words that never advise turning safe loading off."""
    size = path.stat().st_size
    if size == 0:
        return "the file is empty"
    with path.open("rb") as f:
        head = f.read(16)
    if not head.startswith((_ZIP_MAGIC, _PICKLE_MAGIC)):
        return f"it is not a PyTorch checkpoint (its first bytes are {head[:12]!r})"
    message = str(err)
    if isinstance(err, pickle.UnpicklingError) and "Weights only load failed" in message:
        found = re.search(r"GLOBAL (\S+) was not an allowed global", message)
        what = f"a pickled `{found.group(1)}` object" if found else "pickled Python data"
        return (
            f"it holds {what}, which safe loading refuses to unpickle: a checkpoint of tensors never holds one, so "
            "this file was not written by depthforge or was altered. Do not load it with safe loading turned off: "
            "unpickling a file of unknown origin can run arbitrary code"
        )
    return f"it is truncated or corrupted ({_first_sentence(err)})"


def safe_torch_load(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with an error that names the file and the fix when it is missing or damaged.

    The error never passes on torch's advice to retry with safe loading off: a checkpoint of unknown origin may
    run code when unpickled, and a depthforge checkpoint never needs it.
    """
    path = Path(path)
    fix = (
        "  fix: point ckpt_path at a checkpoint written by depthforge (a run writes <run dir>/checkpoints/last.ckpt "
        "and step_*.ckpt)"
    )
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory, not a file\n{fix}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}\n{fix}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, garbage bytes, or pickled code that weights_only refuses
        raise CheckpointError(
            f"cannot load checkpoint {path} ({path.stat().st_size:,} bytes): {torch_load_problem(path, err)}.\n"
            "  This file is not a usable depthforge checkpoint (it is truncated, corrupted, or holds objects that "
            "are unsafe to unpickle).\n"
            f"{fix}, or re-create this one: copy the complete file again (a copy or download that stopped early "
            "leaves a truncated file), or train again."
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
