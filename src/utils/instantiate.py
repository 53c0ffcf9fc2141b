"""Build the Lightning pieces from a composed Hydra config (shared by train, eval, predict and the tests)."""

from __future__ import annotations

from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from src.models.module import SegmentationModule


def build_module(cfg: DictConfig) -> SegmentationModule:
    """Instantiate ``cfg.model`` and hand it the resolved segmenter config, which checkpoints record."""
    module = hydra.utils.instantiate(cfg.model)
    # set afterwards: passed to instantiate, its _target_ entries would be instantiated too
    module.model_config = OmegaConf.to_container(cfg.model.segmenter, resolve=True)
    return module


def build_list(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a config group that holds named objects (callbacks, loggers)."""
    if not cfg:
        return []
    return [hydra.utils.instantiate(c) for c in cfg.values() if isinstance(c, DictConfig) and "_target_" in c]


def build_trainer(cfg: DictConfig, **overrides: Any) -> L.Trainer:
    """The trainer with the configured callbacks and loggers; ``overrides`` replace any Trainer argument."""
    kwargs = {"callbacks": build_list(cfg.get("callbacks")), "logger": build_list(cfg.get("logger")) or False}
    return hydra.utils.instantiate(cfg.trainer, **{**kwargs, **overrides})
