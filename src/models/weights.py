"""Where the frozen VFMs' weights come from, and what to tell the user when they cannot be found or are damaged.

Compute nodes of many clusters have no internet. Both timm and transformers read the Hugging Face hub cache
(``HF_HUB_CACHE``, default ``$HF_HOME/hub``), so one pre-download with ``scripts/download_weights.py`` on a
login node plus ``HF_HUB_OFFLINE=1`` on the compute node serves both backbones.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import timm
import torch

from src.utils.checkpoint import UserError, torch_load_problem

DOWNLOAD_SCRIPT = "scripts/download_weights.py"
_TRUE = {"1", "ON", "YES", "TRUE"}
#: weight files of a ``save_pretrained`` directory or a hub snapshot, checked when loading one fails
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
#: a safetensors header longer than this is garbage, not a header cut short
_MAX_SAFETENSORS_HEADER = 100 * 2**20


class MissingWeightsError(FileNotFoundError, UserError):
    """Pretrained weights are neither on disk nor reachable on the hub."""


class CorruptWeightsError(ValueError, UserError):
    """A weight or config file exists but cannot be read: truncated by an interrupted download or copy, or damaged."""


def hub_offline() -> bool:
    """Whether the user asked for offline hub access (the variables huggingface_hub itself reads)."""
    return any(os.environ.get(var, "").upper() in _TRUE for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def timm_weight_source(model_name: str) -> str:
    """The hub repo (or URL) timm downloads ``model_name``'s default weights from; raises for unknown names."""
    if not timm.is_model(model_name):
        raise ValueError(f"unknown timm model {model_name!r}; see timm.list_models(pretrained=True)")
    cfg = timm.models.get_pretrained_cfg(model_name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise ValueError(f"timm model {model_name!r} has no pretrained weights; pick a name with a tag")
    return cfg.hf_hub_id or cfg.url or cfg.file


def offline_env_lines(cache_dir: str | None = None) -> list[str]:
    """Shell lines that make a compute node read weights from a pre-filled cache without network."""
    lines = [f"export HF_HUB_CACHE={cache_dir}"] if cache_dir else []
    return [*lines, "export HF_HUB_OFFLINE=1"]


def missing_weights(
    what: str, source: str, fetch_args: str, reason: str | BaseException, cache_dir: str | None
) -> MissingWeightsError:
    """One error for every way a weight lookup fails: what was asked for, where we looked, how to fix it."""
    if isinstance(reason, BaseException):
        reason = f"{type(reason).__name__}: {reason}"
    where = cache_dir or os.environ.get("HF_HUB_CACHE") or "the default Hugging Face cache ($HF_HOME/hub)"
    env = "; ".join(offline_env_lines(cache_dir or "<dir>"))
    return MissingWeightsError(
        f"cannot load the weights of {what} from {source}: {reason}\n"
        f"  looked in: {where} (hub offline mode: {'on' if hub_offline() else 'off'})\n"
        f"  fix: on a machine with internet run `python {DOWNLOAD_SCRIPT} {fetch_args} --cache-dir <dir>`,\n"
        f"       then on this machine `{env}` (or pass cache_dir=<dir>), or point the config at a local copy."
    )


def _safetensors_problem(path: Path, size: int) -> str | None:
    """Check a safetensors file's header against its size (the header lists every tensor's byte range)."""
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"it has {size} bytes, fewer than the 8-byte safetensors header length"
        header_len = int.from_bytes(head, "little")
        if header_len > _MAX_SAFETENSORS_HEADER:
            return f"it is not a safetensors file (its first bytes are {head!r})"
        if 8 + header_len > size:
            return f"it has {size:,} bytes, but its header alone needs {8 + header_len:,}"
        try:
            header = json.loads(f.read(header_len))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            return "its safetensors header is not valid JSON listing tensors"
    expected = 8 + header_len + end
    if size < expected:
        return f"it has {size:,} of the {expected:,} bytes its header describes"
    if size > expected:
        return f"it has {size:,} bytes, but its header describes {expected:,}"
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            list(f.keys())
    except Exception as err:  # any reader failure means the file is damaged
        return f"safetensors cannot read it ({type(err).__name__}: {err})"
    return None


def _torch_file_problem(path: Path) -> str | None:
    """Check a torch.save file: the zip archive's central directory and CRCs, then a safe load."""
    with path.open("rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"
    if is_zip:
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            return f"its zip archive cannot be read ({err}): the end of the file is missing or damaged"
        if bad is not None:
            return f"the record {bad!r} of its zip archive fails its checksum"
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except Exception as err:  # any reader failure means the file is unusable
        return torch_load_problem(path, err)
    return None


def weight_file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a readable weight file (empty, truncated, damaged, not weights), or None if it reads.

    Read as the loaders do, by suffix: a ``.safetensors`` header is checked against the file size; any other file
    as a torch.save file (zip central directory and checksums, then a ``weights_only=True`` load). Meant for the
    error path: it may read the whole file.
    """
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return "the file is empty"
    return _safetensors_problem(path, size) if path.suffix == ".safetensors" else _torch_file_problem(path)


def json_file_problem(path: str | os.PathLike) -> str | None:
    """Why a JSON config file cannot be parsed (empty, cut short, garbage), or None if it parses."""
    path = Path(path)
    try:
        json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as err:
        return "the file is empty" if path.stat().st_size == 0 else f"it is not valid JSON ({err})"
    return None


def folder_problem(folder: str | os.PathLike) -> tuple[Path, str] | None:
    """The first unreadable file of a ``save_pretrained`` directory or hub snapshot and why, or None.

    Looks at the top level only: ``*.json`` configs and index files, and every weight file.
    """
    folder = Path(folder)
    for path in sorted(folder.iterdir()):
        if not path.is_file():
            continue
        if path.suffix == ".json":
            problem = json_file_problem(path)
        elif path.suffix in _WEIGHT_SUFFIXES:
            problem = weight_file_problem(path)
        else:
            continue
        if problem is not None:
            return path, problem
    return None


def hub_snapshot(repo_id: str, cache_dir: str | None) -> Path | None:
    """The folder holding ``repo_id``'s files in the local hub cache, or None; never touches the network."""
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(repo_id, cache_dir=cache_dir, local_files_only=True)
    except Exception:  # not cached (or no usable ref): nothing to inspect
        return None
    return Path(folder) if isinstance(folder, str) and Path(folder).is_dir() else None


def corrupt_weights(what: str, path: str | os.PathLike, problem: str, fix: str) -> CorruptWeightsError:
    """One error for every unreadable weight or config file: which file, its size, what is wrong, how to fix it."""
    path = Path(path)
    size = path.stat().st_size if path.exists() else 0
    return CorruptWeightsError(
        f"the weights of {what} cannot be loaded: {path} ({size:,} bytes) is corrupt or truncated: {problem}.\n"
        f"  A download or copy that stopped early leaves a truncated file.\n"
        f"  fix: {fix}"
    )
