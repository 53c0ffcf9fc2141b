"""The entry points end to end on the smoke experiment: train (subprocess, as a user runs it), resume, eval, predict."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from src.eval import evaluate
from src.predict import predict_folder
from src.train import train
from src.utils.checkpoint import CheckpointError, safe_torch_load
from tests.conftest import compose_config

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = ("snow", "night", "fog", "rain")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    """`python -m src.train experiment=smoke` for a few steps, exactly as a user types it."""
    out = tmp_path_factory.mktemp("smoke")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    cmd = [
        sys.executable,
        "-m",
        "src.train",
        "experiment=smoke",
        "trainer.max_steps=4",
        "trainer.val_check_interval=4",
        "trainer.log_every_n_steps=1",
        "callbacks.model_checkpoint.every_n_train_steps=4",
        f"paths.data_dir={out / 'data'}",
        f"hydra.run.dir={out / 'run'}",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def test_smoke_logs_per_domain_miou_and_writes_a_checkpoint(smoke_run):
    metrics_file = next((smoke_run / "run" / "csv").rglob("metrics.csv"))
    header = next(csv.reader(metrics_file.open()))
    for domain in DOMAINS:
        assert f"val/{domain}/mIoU" in header and f"test/{domain}/mIoU" in header
    assert "val/mean_mIoU" in header and "train/loss" in header
    rows = [r for r in csv.DictReader(metrics_file.open()) if r.get("val/mean_mIoU")]
    mean = float(rows[-1]["val/mean_mIoU"])
    per_domain = [float(rows[-1][f"val/{d}/mIoU"]) for d in DOMAINS]
    assert mean == pytest.approx(sum(per_domain) / 4, abs=1e-4)
    assert (smoke_run / "run" / "checkpoints" / "last.ckpt").is_file()


def test_checkpoint_holds_trainable_tensors_only(smoke_run):
    ckpt = safe_torch_load(smoke_run / "run" / "checkpoints" / "last.ckpt")
    keys = list(ckpt["state_dict"])
    assert keys and all(
        k.startswith(("segmenter.token_adapter.", "segmenter.refinement_decoder.", "segmenter.mask_head."))
        for k in keys
    )
    n_state = sum(len(g["params"]) for g in ckpt["optimizer_states"][0]["param_groups"])
    assert n_state == sum(1 for k in keys if "criterion.empty_weight" not in k)
    assert ckpt["global_step"] == 4 and ckpt["model_config"]["token_adapter"]["_target_"].endswith(".DepthForgeAdapter")


def test_eval_and_predict_run_on_the_smoke_checkpoint(smoke_run, tmp_path):
    ckpt = smoke_run / "run" / "checkpoints" / "last.ckpt"
    base = ["experiment=smoke", f"paths.data_dir={smoke_run / 'data'}", f"ckpt_path={ckpt}"]
    rows = evaluate(compose_config(base, tmp_path, config_name="eval"))
    assert [r["domain"] for r in rows[:4]] == list(DOMAINS)
    assert (tmp_path / "results.csv").is_file() and "| snow |" in (tmp_path / "results.md").read_text()
    images = smoke_run / "data" / "smoke" / "acdc" / "rgb_anon" / "fog" / "val"
    cfg = compose_config(
        [*base, f"input_dir={images}", f"output_dir={tmp_path / 'pred'}", "outputs=[panel]"],
        tmp_path,
        config_name="predict",
    )
    written = predict_folder(cfg)
    assert len(written) == len(list(images.rglob("*.png"))) and all(p.is_file() for p in written)


def test_checkpoint_from_another_config_is_refused(smoke_run, tmp_path):
    ckpt = smoke_run / "run" / "checkpoints" / "last.ckpt"
    base = ["experiment=smoke", f"paths.data_dir={smoke_run / 'data'}", f"ckpt_path={ckpt}", "ablation=rein"]
    with pytest.raises(CheckpointError, match="token_adapter._target_"):
        evaluate(compose_config(base, tmp_path, config_name="eval"))


def _train(out: Path, data: Path, *extra: str) -> Path:
    overrides = [
        "experiment=smoke",
        f"paths.data_dir={data}",
        "trainer.max_steps=6",
        "trainer.val_check_interval=100",
        "data.batch_size=2",
        "test=false",
        "callbacks.model_checkpoint.every_n_train_steps=1",
        "trainer.deterministic=true",
        "trainer.log_every_n_steps=1",
        "seed=1",
        *extra,
    ]
    train(compose_config(overrides, out))
    return out / "checkpoints" / "last.ckpt"


def test_resume_after_a_crash_continues_exactly(smoke_run, tmp_path):
    data = smoke_run / "data"
    straight = safe_torch_load(_train(tmp_path / "a", data))
    with pytest.raises(RuntimeError, match="simulated crash"):  # dies mid-epoch, after step 3 was checkpointed
        _train(tmp_path / "b", data, "+callbacks.crash._target_=tests.helpers.CrashAt", "+callbacks.crash.step=3")
    crashed = tmp_path / "b" / "checkpoints" / "last.ckpt"
    assert safe_torch_load(crashed)["global_step"] == 3
    resumed = safe_torch_load(_train(tmp_path / "c", data, f"ckpt_path={crashed}"))
    assert resumed["global_step"] == straight["global_step"] == 6
    assert straight["state_dict"].keys() == resumed["state_dict"].keys()
    for key, value in straight["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=0, atol=0, msg=key)
    for a, b in zip(
        straight["optimizer_states"][0]["state"].values(), resumed["optimizer_states"][0]["state"].values()
    ):
        torch.testing.assert_close(a["exp_avg"], b["exp_avg"], rtol=0, atol=0)
    # the logged losses of the resumed steps are the uninterrupted run's; the random state is saved per rank
    losses = {run: _losses(tmp_path / run) for run in "abc"}
    assert sorted(losses["c"]) == [3, 4, 5] and all(losses["a"][step] == v for step, v in losses["c"].items())
    assert {"torch", "numpy", "python"} <= set(resumed["rng"]["ranks"][0]) and len(resumed["rng"]["ranks"]) == 1
    assert resumed["DGDataModule"]["ranks"][0]["world_size"] == 1


def _losses(run: Path) -> dict[int, float]:
    """Logged step -> train/loss over every metrics.csv of a run directory."""
    return {
        int(row["step"]): float(row["train/loss"])
        for path in run.rglob("metrics.csv")
        for row in csv.DictReader(path.open())
        if row.get("train/loss")
    }


def test_damaged_checkpoint_is_refused_by_the_entry_points(smoke_run, tmp_path):
    data = (smoke_run / "run" / "checkpoints" / "last.ckpt").read_bytes()
    damaged = tmp_path / "damaged.ckpt"
    damaged.write_bytes(data[: len(data) // 3])
    base = ["experiment=smoke", f"paths.data_dir={smoke_run / 'data'}", f"ckpt_path={damaged}"]
    with pytest.raises(CheckpointError, match="damaged.ckpt"):
        evaluate(compose_config(base, tmp_path / "eval", config_name="eval"))
    with pytest.raises(CheckpointError, match="damaged.ckpt"):
        train(compose_config([*base, "trainer.max_steps=8"], tmp_path / "train"))
