"""MiniDG's VFM pretraining through the project's backbones: a few steps of each, reloaded as the segmenter loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from src.minidg.dataset import load_pretrain_set, write_pretrain_set
from src.minidg.pretrain import pretrain_depth, pretrain_visual
from src.minidg.vfms import VISUAL_CONFIG, depth_vfm, visual_vfm


@pytest.fixture
def data(tmp_path: Path):
    """A 4-image pretraining set; the torch settings pretraining switches (1 thread, deterministic) are restored."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    write_pretrain_set(tmp_path / "set", num_scenes=2, stylings=2, seed=0, workers=1)
    yield load_pretrain_set(tmp_path / "set")
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def test_visual_pretraining_is_deterministic_and_its_file_loads_in_the_configured_backbone(data, tmp_path) -> None:
    logs = [pretrain_visual(data, tmp_path / name, steps=2, batch_size=2) for name in ("a", "b")]
    files = [(tmp_path / name / "model.safetensors").read_bytes() for name in ("a", "b")]
    assert files[0] == files[1]  # same seed, same bytes
    assert logs[0]["loss_first20"] == logs[1]["loss_first20"] and set(logs[0]["loss_first20"]) == {"total", "simmim"}
    cfg = OmegaConf.load(VISUAL_CONFIG)  # the log states the configured architecture
    assert logs[0]["arch"] == cfg.model_name and logs[0]["kwargs"]["patch_size"] == cfg.patch_size
    assert json.loads((tmp_path / "a" / "pretrain_log.json").read_text())["steps"] == 2
    trained, untrained = visual_vfm(tmp_path / "a" / "model.safetensors"), visual_vfm(None)
    assert not any(p.requires_grad for p in trained.parameters())
    assert not torch.equal(trained.model.pos_embed, untrained.model.pos_embed)


def test_depth_pretraining_saves_a_model_the_configured_backbone_loads(data, tmp_path) -> None:
    log = pretrain_depth(data, tmp_path / "depth", steps=2, batch_size=2)
    assert set(log["loss_first20"]) == {"total", "dpt", "token_probe"}
    assert (tmp_path / "depth" / "config.json").is_file() and (tmp_path / "depth" / "pretrain_log.json").is_file()
    backbone = depth_vfm(tmp_path / "depth")
    assert (backbone.num_layers, backbone.embed_dim, backbone.patch_size) == (6, 128, 14)
    assert backbone.align == "resize_input"
