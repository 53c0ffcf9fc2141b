"""A reduced MiniDG run (few steps, one seed) through the ordinary training entry point."""

from __future__ import annotations

import csv

import pytest

from src.metrics import mean_miou
from src.train import train
from tests.conftest import compose_config

DOMAINS = ("day", "night", "fog", "snow")


def test_reduced_minidg_run_learns_and_scores_every_domain(tmp_path):
    """DepthForge (depth VFM, tokens, DRD, head) on the real MiniDG VFMs: 16 steps of batch 4, 4 test scenes."""
    overrides = [
        "experiment=minidg",
        f"paths.data_dir={tmp_path / 'data'}",
        "data.prepare.num_train=16",
        "data.prepare.num_test=4",
        "data.batch_size=4",
        "data.num_workers=0",
        "data.persistent_workers=false",
        "trainer.max_steps=16",
        "trainer.val_check_interval=16",
        "trainer.log_every_n_steps=1",
        "callbacks.model_checkpoint.every_n_train_steps=16",
    ]
    out = tmp_path / "run"
    metrics = train(compose_config(overrides, out))
    rows = list(csv.DictReader(next((out / "csv").rglob("metrics.csv")).open()))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 16
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4  # training lowers the loss
    for domain in DOMAINS:
        assert 0.0 <= metrics[f"val/{domain}/mIoU"] <= 100.0
    shifted = mean_miou({d: {"mIoU": metrics[f"val/{d}/mIoU"]} for d in DOMAINS}, ["night", "fog", "snow"])
    assert metrics["val/mean_mIoU"] == pytest.approx(float(shifted), abs=1e-4)  # the mean is over the shifted domains
