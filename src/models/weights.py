"""Where the frozen VFMs' weights come from, and what to tell the user when they cannot be found.

Compute nodes of many clusters have no internet. Both timm and transformers read the Hugging Face hub cache
(``HF_HUB_CACHE``, default ``$HF_HOME/hub``), so one pre-download with ``scripts/download_weights.py`` on a
login node plus ``HF_HUB_OFFLINE=1`` on the compute node serves both backbones.
"""

from __future__ import annotations

import os

import timm

DOWNLOAD_SCRIPT = "scripts/download_weights.py"
_TRUE = {"1", "ON", "YES", "TRUE"}


class MissingWeightsError(FileNotFoundError):
    """Pretrained weights are neither on disk nor reachable on the hub."""


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
