"""Shared fixtures: a generated data root in every real layout, and Hydra composition of the real configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from src.data.synthetic import DATASET_DIRS, KINDS, write_dataset

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
# tiny stand-ins for the real VFMs and head, so every experiment builds in seconds on a CPU
TINY = ["model/backbone=tiny_vit", "model/depth=tiny_random", "model/head=mask2former_tiny", "trainer=cpu"]

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """A data root holding every dataset of docs/method.md §6.1 in its real layout (2 small images per split)."""
    root = tmp_path_factory.mktemp("data")
    for kind in KINDS:
        if kind != "mapillary_raw":
            write_dataset(kind, root / DATASET_DIRS[kind], num_images=2, size=(128, 64), seed=1)
    return root


def compose_config(overrides: list[str], output_dir: Path, config_name: str = "train") -> DictConfig:
    """The config `python -m src.train <overrides>` would run, with outputs under `output_dir`."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name, overrides=[*overrides, f"paths.output_dir={output_dir}"])
