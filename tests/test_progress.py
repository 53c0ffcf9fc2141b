"""The console of a step-based run (src/callbacks/progress.py), the Optuna sweep and the SLURM launcher configs."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
from hydra import compose, initialize_config_dir
from lightning.pytorch.demos.boring_classes import BoringModel

from src.callbacks import StepProgress
from src.callbacks.progress import _Rate, format_duration, format_rate, format_status
from src.train import train
from src.utils.instantiate import build_trainer
from tests.conftest import CONF_DIR, compose_config

ROOT = Path(__file__).resolve().parents[1]


# --- the text ----------------------------------------------------------------------------------------------------
def test_duration_and_rate_formatting():
    assert format_duration(0) == "0:00:00"
    assert format_duration(16812) == "4:40:12"
    assert format_duration(59.6) == "0:01:00"
    assert format_duration(86400 + 3661) == "1 day, 1:01:01" and format_duration(3 * 86400) == "3 days, 0:00:00"
    assert format_duration(None) == format_duration(float("inf")) == format_duration(-1) == "?"
    assert format_rate(2.314) == "2.31 it/s"
    assert format_rate(0.25) == "4.00 s/it"
    assert format_rate(None) == format_rate(0.0) == "? it/s"


def test_status_line():
    line = format_status(1200, 40000, rate=2.0, loss=12.34549, lr=1e-4)
    assert line == "step 1200/40000 (3.0%) | 2.00 it/s | ETA 5:23:20 | loss 12.345 | lr 1.0e-04"
    assert format_status(0, 40000) == "step 0/40000 (0.0%)"
    assert format_status(7, None, rate=1.5) == "step 7 | 1.50 it/s"  # no total: no percentage, no ETA
    assert format_status(3, 10, rate=None, loss=1.0) == "step 3/10 (30.0%) | loss 1.000"
    assert format_status(5, 20, rate=10.0, unit="validation") == "validation 5/20 (25.0%) | 10.00 it/s | ETA 0:00:02"


def test_rate_is_measured_over_a_window():
    rate = _Rate(window=2)
    assert rate.value is None
    for t, step in [(0.0, 0), (1.0, 1), (2.0, 3), (3.0, 5)]:
        rate.update(t, step)
    assert rate.value == pytest.approx(2.0)  # the last 2 updates: 4 steps in 2 s
    rate.reset()
    assert rate.value is None


# --- the callback on a tiny model ---------------------------------------------------------------------------------
class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _fit(progress: StepProgress, **trainer_kwargs) -> L.Trainer:
    kwargs = dict(max_steps=6, limit_val_batches=2, val_check_interval=3, logger=False, enable_checkpointing=False)
    trainer = L.Trainer(
        accelerator="cpu", callbacks=[progress], enable_model_summary=False, **{**kwargs, **trainer_kwargs}
    )
    trainer.fit(BoringModel())
    return trainer


def test_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    trainer = _fit(StepProgress(every_n_steps=2, every_n_seconds=None, stream=out))
    text = out.getvalue()
    steps = re.findall(r"^step (\d+)/6 \(", text, flags=re.M)
    assert steps == ["1", "3", "5", "6"], text  # the first, every 2 after it, and the last
    assert re.search(
        r"^step 6/6 \(100\.0%\) \| [\d.]+ (it/s|s/it) \| ETA 0:00:00 \| loss \d+\.\d{3} \| lr 1\.0e-01$", text, re.M
    )
    assert text.count("validation at step 3: 2 batches") == 1 and text.count("validation at step 6: 2 batches") == 1
    assert text.count("validation done: 2 batches in") == 2
    assert trainer.progress_bar_callback.is_disabled  # Lightning's per-epoch bar is switched off
    assert "Epoch" not in text


def test_a_bar_on_a_terminal():
    out = _Tty()
    _fit(StepProgress(stream=out))
    text = out.getvalue()
    assert "train " in text and "step 6/6 (100.0%)" in text and "ETA 0:00:00" in text
    assert "validation at step 3" in text  # the validation's own bar
    assert not re.search(r"^step \d+/6", text, re.M)  # no plain lines


def test_gradient_accumulation_counts_optimizer_steps():
    out = io.StringIO()
    _fit(StepProgress(every_n_steps=1, every_n_seconds=None, stream=out), accumulate_grad_batches=2, max_steps=3)
    assert re.findall(r"^step (\d+)/3 ", out.getvalue(), flags=re.M) == ["1", "2", "3"]


def test_enable_progress_bar_false_silences_it(tmp_path):
    cfg = compose_config(["experiment=smoke", "+trainer.enable_progress_bar=false"], tmp_path)
    assert cfg.callbacks.progress._target_ == "src.callbacks.StepProgress"
    build_trainer(cfg, logger=False)  # no "progress bar disabled but found in callbacks" error: it is not a ProgressBar
    out = io.StringIO()
    _fit(StepProgress(stream=out, every_n_steps=1), enable_progress_bar=False, max_steps=2)
    assert out.getvalue() == ""


def test_smoke_run_prints_plain_step_lines(tmp_path, capsys):
    """A real run with stdout captured (not a terminal): plain lines with the global step out of max_steps."""
    overrides = [
        "experiment=smoke",
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        "callbacks.model_checkpoint.every_n_train_steps=4",
        "callbacks.progress.every_n_steps=2",
        "test=false",
        f"paths.data_dir={tmp_path / 'data'}",
    ]
    train(compose_config(overrides, tmp_path / "run"))
    text = capsys.readouterr().out
    assert re.findall(r"^step (\d+)/4 \(", text, flags=re.M) == ["1", "3", "4"], text
    assert re.search(r"^step 4/4 \(100\.0%\) \| .* \| ETA 0:00:00 \| loss \d+\.\d{3} \| lr \d\.\de-\d\d$", text, re.M)
    assert "validation at step 2:" in text and "validation at step 4:" in text
    assert "training from step 0 to 4" in text and "Epoch" not in text


# --- sweeps and SLURM ---------------------------------------------------------------------------------------------
def _compose_hydra(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def test_slurm_launcher_asks_one_task_per_gpu():
    cfg = _compose_hydra(["experiment=citys2acdc", "trainer=ddp", "trainer.devices=4", "hydra/launcher=slurm"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.tasks_per_node == launcher.gpus_per_node == cfg.trainer.devices == 4
    assert launcher.nodes == cfg.trainer.num_nodes == 1
    cfg = _compose_hydra(["trainer=ddp", "trainer.devices=2", "trainer.num_nodes=3", "hydra/launcher=slurm"])
    assert (cfg.hydra.launcher.nodes, cfg.hydra.launcher.tasks_per_node) == (3, 2)
    single = _compose_hydra(["experiment=citys2acdc", "hydra/launcher=slurm"]).hydra.launcher  # trainer=gpu
    assert single.nodes == single.tasks_per_node == single.gpus_per_node == 1


def test_optuna_sweep_config():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    cfg = _compose_hydra(["+hparams_search=optuna", "experiment=citys2acdc"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert cfg.optimized_metric == "val/mean_mIoU" and str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    params = dict(sweeper.params)
    assert params["model.optimizer.lr"] == "tag(log, interval(1e-5, 1e-3))"
    plain = compose_config(["experiment=citys2acdc"], Path("unused"))
    for key in params:  # every searched key exists in the run config
        node = plain
        for part in key.split("."):
            assert part in node, key
            node = node[part]


def test_optuna_sweep_runs_two_trials(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    cmd = [
        sys.executable,
        "-m",
        "src.train",
        "+hparams_search=optuna",
        "experiment=smoke",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "callbacks.model_checkpoint.every_n_train_steps=2",
        "test=false",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=1",
        f"paths.data_dir={tmp_path / 'data'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = (tmp_path / "sweep" / "optimization_results.yaml").read_text()
    assert "best_params:" in results and "model.optimizer.lr:" in results and "best_value:" in results
    assert sorted(p.parent.name for p in (tmp_path / "sweep").glob("*/val_results.csv")) == ["0", "1"]
