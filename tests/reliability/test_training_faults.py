"""Faults injected into real runs of the smoke experiment, and the exact behaviour each must produce
(docs/reliability.md): a diverging loss, SIGTERM/SIGUSR1 (SLURM preemption), kill -9 during a validation, kill -9
under DDP, and data that silently trains on nothing.

Every run is the same small configuration (4 generated images, batches of 2 = 2 steps per epoch, 6 steps, validation
on one domain after steps 3 and 6); the interrupted runs are real processes killed or signalled mid-run, and a resumed
run must end with exactly the weights, losses and validation metrics of the uninterrupted one.
"""

from __future__ import annotations

import csv
import math
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback
from PIL import Image

from src.callbacks import DataError, IncompleteRunError, NonFiniteTrainingError, Preempted, Preemption
from src.data.datamodule import DGDataModule
from src.data.datasets.base import DataWarning
from src.data.datasets.cityscapes import CityscapesDataset
from src.data.sampler import ResumableSampler
from src.data.synthetic import write_dg_benchmark
from src.train import train
from src.utils.checkpoint import safe_torch_load
from tests.conftest import compose_config

ROOT = Path(__file__).resolve().parents[2]
HERE = "tests.reliability.test_training_faults"
CKPT_EVERY = "callbacks.model_checkpoint.every_n_train_steps"


# --------------------------------------------------------------------------- fault injection (named by _target_)


class KillAt(Callback):
    """Sends ``sig`` to its own process (every rank's) once ``step`` steps are done: as the next one starts, or during
    the validation after step ``step``."""

    def __init__(self, step: int, during_validation: bool = False, sig: str = "SIGKILL") -> None:
        self.step, self.during_validation, self.sig = step, during_validation, signal.Signals[sig]

    def on_train_batch_start(self, trainer, *args) -> None:
        if not self.during_validation and trainer.global_step == self.step:
            os.kill(os.getpid(), self.sig)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.during_validation and not trainer.sanity_checking and trainer.global_step == self.step:
            if batch_idx == 1:  # one validation batch done, the rest not
                os.kill(os.getpid(), self.sig)


class PauseAt(Callback):
    """At the end of step ``step`` (or of the first batch of its validation) writes ``marker`` and sleeps, so that the
    test can signal the process at a known point; the signal is handled during the sleep."""

    def __init__(self, step: int, marker: str, during_validation: bool = False, seconds: float = 20.0) -> None:
        self.step, self.marker, self.during_validation, self.seconds = step, marker, during_validation, seconds

    def _pause(self) -> None:
        Path(self.marker).write_text("ready")
        deadline = time.monotonic() + self.seconds
        while time.monotonic() < deadline and Path(self.marker).exists():
            time.sleep(0.05)  # the test removes the marker once it has sent the signal

    def on_train_batch_end(self, trainer, *args) -> None:
        if not self.during_validation and trainer.global_step == self.step:
            self._pause()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.during_validation and not trainer.sanity_checking and trainer.global_step == self.step:
            if batch_idx == 0:
                self._pause()


class SignalAt(Callback):
    """Sends ``sig`` to its own process at the end of step ``step``, or at the first test batch (in-process runs)."""

    def __init__(self, step: int = 0, sig: str = "SIGTERM", during_test: bool = False) -> None:
        self.step, self.sig, self.during_test = step, signal.Signals[sig], during_test

    def on_train_batch_end(self, trainer, *args) -> None:
        if not self.during_test and trainer.global_step == self.step:
            os.kill(os.getpid(), self.sig)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.during_test and batch_idx == 0 and dataloader_idx == 0:
            os.kill(os.getpid(), self.sig)


class NaNBatchAt(Callback):
    """Makes the images of step ``step`` NaN: one transient non-finite loss."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step + 1 == self.step:
            batch["image"].fill_(float("nan"))


class OverflowAt(Callback):
    """Right after the optimiser step ``step`` (finite loss and gradients), sets one trainable weight to inf."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step + 1 == self.step:
            param = next(p for p in pl_module.parameters() if p.requires_grad)
            handle = None

            def overflow(*_):
                with torch.no_grad():
                    param.view(-1)[0] = float("inf")
                handle.remove()

            handle = optimizer.register_step_post_hook(overflow)


# --------------------------------------------------------------------------- runs


def base(data: Path, log_dir: Path, *extra: str) -> list[str]:
    return [
        "experiment=smoke",
        f"paths.data_dir={data}",
        f"paths.log_dir={log_dir}",
        "data.prepare=null",
        "data.batch_size=2",
        "data.targets.night=null",
        "data.targets.fog=null",
        "data.targets.rain=null",
        "data.mean_domains=[snow]",
        "trainer.max_steps=6",
        "trainer.val_check_interval=3",
        "trainer.log_every_n_steps=1",
        "+trainer.enable_progress_bar=false",
        f"{CKPT_EVERY}=2",
        "callbacks.model_checkpoint.save_top_k=-1",
        "trainer.deterministic=true",
        "seed=1",
        "test=false",
        *extra,
    ]


def inject(name: str, cls: str, **params: object) -> list[str]:
    """The overrides that add the fault-injection callback ``cls`` of this module as ``callbacks.<name>``."""
    values = {k: str(v).lower() if isinstance(v, bool) else v for k, v in params.items()}
    return [f"+callbacks.{name}._target_={HERE}.{cls}", *(f"+callbacks.{name}.{k}={v}" for k, v in values.items())]


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0", **extra}


def launch(run: Path, overrides: list[str], **env_extra: str) -> subprocess.Popen:
    """``python -m src.train <overrides>`` as a user starts it, in its own process group."""
    cmd = [sys.executable, "-m", "src.train", *overrides, f"hydra.run.dir={run}"]
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env(**env_extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        try:  # a DDP child that outlived its parent
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return proc.returncode, out


def signal_when_ready(proc: subprocess.Popen, marker: Path, sig: signal.Signals, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert proc.poll() is None, finish(proc)[1][-3000:]
        assert time.monotonic() < deadline, "the run never reached the pause"
        time.sleep(0.1)
    proc.send_signal(sig)
    time.sleep(0.5)  # the handler runs during the pause; then let the run go on
    marker.unlink()


def metrics(run: Path) -> dict[tuple[str, int], float]:
    """(metric, logged step) -> value over every metrics.csv of a run directory (a resumed run adds a version)."""
    out: dict[tuple[str, int], float] = {}
    for path in sorted(run.rglob("metrics.csv")):
        for row in csv.DictReader(path.open()):
            for key, value in row.items():
                if value and key not in ("epoch", "step"):
                    out[(key, int(row["step"]))] = float(value)
    return out


def only(rows: dict[tuple[str, int], float], prefix: str) -> dict[tuple[str, int], float]:
    return {k: v for k, v in rows.items() if k[0].startswith(prefix)}


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = safe_torch_load(a), safe_torch_load(b)
    assert first["global_step"] == second["global_step"]
    assert first["state_dict"].keys() == second["state_dict"].keys()
    differ = [k for k, v in first["state_dict"].items() if not torch.equal(v, second["state_dict"][k])]
    assert not differ, f"{len(differ)} of {len(first['state_dict'])} tensors differ, e.g. {differ[:3]}"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_dg_benchmark(root / "smoke", num_images=4, size=(128, 64), seed=0)
    return root


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one is compared with."""
    out = tmp_path_factory.mktemp("reference")
    train(compose_config(base(data, out / "logs"), out))
    return out


# --------------------------------------------------------------------------- 1. non-finite loss


def test_nonfinite_loss_stops_with_step_lrs_and_terms_and_keeps_the_last_good_checkpoint(data, tmp_path):
    run = tmp_path / "run"
    code, out = finish(launch(run, base(data, tmp_path / "logs", "model.optimizer.lr=1e6", f"{CKPT_EVERY}=1")))
    assert code == 1, out[-3000:]
    assert "Traceback" not in out, out[-3000:]  # the message alone, as for every UserError
    assert "training diverged: non-finite loss at step 2 of max_steps=6" in out, out[-3000:]
    assert "loss terms: loss=nan, loss_cross_entropy=nan, loss_mask=nan, loss_dice=nan" in out
    assert re.search(r"learning rates: no_decay=[0-9.e+]+, decay=[0-9.e+]+\n", out)  # each group, by its name
    assert "non-finite gradients: " in out and "segmenter.token_adapter." in out
    assert "fix: lower the learning rate (model.optimizer.lr)" in out and "callbacks.nonfinite.action=skip" in out
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))
    assert ckpts == ["last.ckpt", "step_000001.ckpt"], ckpts
    last = run / "checkpoints" / "last.ckpt"
    assert f"the newest checkpoint is {last} (step 1), resume with: ckpt_path={last}\n" in out
    last = safe_torch_load(run / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 1
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
    assert not only(metrics(run), "val/"), "no validation may report on diverged weights"


def test_nonfinite_skip_drops_the_update_and_goes_on(data, tmp_path):
    extra = [*inject("nan", "NaNBatchAt", step=2), "callbacks.nonfinite.action=skip"]
    metrics_out = train(compose_config(base(data, tmp_path / "logs", f"{CKPT_EVERY}=1", *extra), tmp_path))
    ckpt = tmp_path / "checkpoints"
    step1, step2 = safe_torch_load(ckpt / "step_000001.ckpt"), safe_torch_load(ckpt / "step_000002.ckpt")
    for key, value in step1["state_dict"].items():  # step 2's update was dropped: weights and moments as after 1
        torch.testing.assert_close(step2["state_dict"][key], value, rtol=0, atol=0, msg=key)
    for a, b in zip(step1["optimizer_states"][0]["state"].values(), step2["optimizer_states"][0]["state"].values()):
        torch.testing.assert_close(a["exp_avg"], b["exp_avg"], rtol=0, atol=0)
    final = safe_torch_load(ckpt / "last.ckpt")
    assert final["global_step"] == 6 and all(torch.isfinite(v).all() for v in final["state_dict"].values())
    rows = metrics(tmp_path)
    assert rows[("train/nonfinite_skips", 1)] == 1.0  # logged at step index 1 (the second step)
    assert math.isfinite(metrics_out["val/mean_mIoU"])


def test_nonfinite_skips_in_a_row_still_stop(data, tmp_path):
    extra = ["model.optimizer.lr=1e6", "callbacks.nonfinite.action=skip", "callbacks.nonfinite.max_consecutive_skips=3"]
    with pytest.raises(NonFiniteTrainingError, match=r"3 steps in a row up to step 4 of max_steps=6") as info:
        train(compose_config(base(data, tmp_path / "logs", f"{CKPT_EVERY}=1", *extra), tmp_path))
    assert "loss_cross_entropy=nan" in str(info.value) and "max_consecutive_skips=3" in str(info.value)
    ckpt = tmp_path / "checkpoints"
    assert safe_torch_load(ckpt / "last.ckpt")["global_step"] == 3  # steps 2 and 3 skipped, saved finite
    for path in ckpt.glob("step_*.ckpt"):
        assert all(torch.isfinite(v).all() for v in safe_torch_load(path)["state_dict"].values()), path


def test_weights_made_nonfinite_by_an_update_stop_the_run(data, tmp_path):
    extra = [*inject("overflow", "OverflowAt", step=3), f"{CKPT_EVERY}=1"]
    with pytest.raises(NonFiniteTrainingError, match=r"optimiser step 3 of max_steps=6 made 1 trainable tensors"):
        train(compose_config(base(data, tmp_path / "logs", *extra), tmp_path))
    assert safe_torch_load(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 2
    assert not (tmp_path / "checkpoints" / "step_000003.ckpt").exists()


# --------------------------------------------------------------------------- 2. SIGTERM / SLURM


def test_sigterm_saves_the_current_step_exits_nonzero_and_resumes_exactly(data, reference, tmp_path):
    run, marker = tmp_path / "run", tmp_path / "pause"
    proc = launch(run, base(data, tmp_path / "logs", *inject("pause", "PauseAt", step=5, marker=marker)))
    signal_when_ready(proc, marker, signal.SIGTERM)
    code, out = finish(proc)
    assert code == 128 + signal.SIGTERM, out[-3000:]
    last = run / "checkpoints" / "last.ckpt"
    assert f"stopped by SIGTERM at step 5 of max_steps=6: saved a resumable checkpoint of step 5 to {last}" in out
    assert f"ckpt_path={last}" in out
    assert safe_torch_load(last)["global_step"] == 5  # not a checkpoint step: written by the preemption itself
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_000002.ckpt", "step_000004.ckpt"]
    assert not list((run / "checkpoints").glob(".*.tmp"))  # written atomically

    train(compose_config(base(data, tmp_path / "logs", f"ckpt_path={last}"), run))
    assert_same_weights(reference / "checkpoints" / "last.ckpt", last)
    assert only(metrics(run), "train/loss") == only(metrics(reference), "train/loss")
    assert only(metrics(run), "val/") == only(metrics(reference), "val/")


def test_slurm_usr1_during_validation_requeues_and_the_job_resumes_by_itself(data, reference, tmp_path, monkeypatch):
    """SIGUSR1 while step 3 is being validated: the checkpoint says that validation is pending, the job is
    requeued (scontrol, as Lightning's SLURMEnvironment does), and the requeued job resumes with no ckpt_path, runs
    step 3's validation and ends exactly as the uninterrupted run."""
    run, marker, logs = tmp_path / "run", tmp_path / "pause", tmp_path / "logs"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol_calls"
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    slurm = {
        "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "train", "SLURM_NTASKS": "1", "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost",
    }  # fmt: skip
    pause = inject("pause", "PauseAt", step=3, marker=marker, during_validation=True)
    proc = launch(run, base(data, logs, *pause), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **slurm)
    signal_when_ready(proc, marker, signal.SIGUSR1)
    code, out = finish(proc)
    assert code == 128 + signal.SIGUSR1, out[-3000:]
    assert calls.read_text().split() == ["requeue", "4242"]
    assert "requeued SLURM job 4242; the requeued job resumes from this checkpoint" in out, out[-3000:]
    assert "its validation had not finished: the resumed run runs it first" in out
    saved = safe_torch_load(run / "checkpoints" / "last.ckpt")
    assert saved["global_step"] == 3 and saved["validation_pending"] == 3
    record = logs / "requeue" / "slurm-4242.json"
    assert record.is_file()

    for key, value in {**slurm, "SLURM_RESTART_COUNT": "1"}.items():  # the requeued job: same id, no ckpt_path
        monkeypatch.setenv(key, value)
    train(compose_config(base(data, logs), tmp_path / "requeued"))
    assert not record.exists()  # the job is complete
    assert not list((tmp_path / "requeued").rglob("*.ckpt"))  # it went on in the first run's directory
    assert_same_weights(reference / "checkpoints" / "last.ckpt", run / "checkpoints" / "last.ckpt")
    assert only(metrics(run), "val/") == only(metrics(reference), "val/")  # step 3's validation included
    assert only(metrics(run), "train/loss") == only(metrics(reference), "train/loss")


def test_sigterm_at_the_end_of_a_step_due_for_validation_resumes_into_it(data, reference, tmp_path):
    """In-process: the signal is handled at the end of step 3, before its validation has started."""
    extra = [*inject("sig", "SignalAt", step=3), f"{CKPT_EVERY}=3"]
    with pytest.raises(Preempted) as info:
        train(compose_config(base(data, tmp_path / "logs", *extra), tmp_path))
    assert info.value.code == 128 + signal.SIGTERM and "its validation had not finished" in str(info.value)
    assert not (tmp_path / "checkpoints" / "step_000003.ckpt").exists()  # waits for the validation of step 3
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert safe_torch_load(last)["validation_pending"] == 3
    train(compose_config(base(data, tmp_path / "logs", f"{CKPT_EVERY}=3", f"ckpt_path={last}"), tmp_path))
    assert (tmp_path / "checkpoints" / "step_000003.ckpt").exists()  # written after the resumed validation
    assert safe_torch_load(tmp_path / "checkpoints" / "step_000003.ckpt")["callbacks"]  # a regular checkpoint
    assert_same_weights(reference / "checkpoints" / "last.ckpt", last)
    assert only(metrics(tmp_path), "val/") == only(metrics(reference), "val/")


def test_a_signal_before_the_final_validation_lets_it_finish(data, reference, tmp_path):
    """Nothing can resume into a validation at max_steps (Lightning's loop ends there): it runs, then the stop."""
    with pytest.raises(Preempted, match=r"stopped by SIGTERM at step 6 of max_steps=6") as info:
        train(compose_config(base(data, tmp_path / "logs", *inject("sig", "SignalAt", step=6)), tmp_path))
    assert "pending" not in str(info.value)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert "validation_pending" not in safe_torch_load(last)
    assert only(metrics(tmp_path), "val/") == only(metrics(reference), "val/")
    train(compose_config(base(data, tmp_path / "logs", f"ckpt_path={last}"), tmp_path))  # nothing left: exits 0
    assert_same_weights(reference / "checkpoints" / "last.ckpt", last)


def test_sigterm_during_the_test_exits_nonzero_and_says_how_to_get_the_metrics(data, tmp_path):
    extra = [*inject("sig", "SignalAt", during_test=True), "test=true"]
    with pytest.raises(Preempted) as info:
        train(compose_config(base(data, tmp_path / "logs", *extra), tmp_path))
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert info.value.code == 128 + signal.SIGTERM
    assert "stopped by SIGTERM during the test: the test metrics were not computed" in str(info.value)
    assert f"python -m src.eval experiment=<the same experiment> ckpt_path={last}" in str(info.value)
    assert safe_torch_load(last)["global_step"] == 6


def test_preemption_handler_is_wired_in_the_default_callbacks(data, tmp_path):
    cfg = compose_config(base(data, tmp_path / "logs"), tmp_path)
    assert cfg.callbacks.preemption._target_ == "src.callbacks.Preemption"
    assert Preemption(signals=["TERM", "usr1"]).signals == [signal.SIGTERM, signal.SIGUSR1]


# --------------------------------------------------------------------------- 3. checkpoints and validations


def test_every_step_checkpoint_exists_including_epoch_ends(reference):
    """2 steps per epoch: steps 2, 4 and 6 end an epoch (Lightning's ModelCheckpoint skips 2 and 4 and writes 3)."""
    names = sorted(p.name for p in (reference / "checkpoints").glob("step_*.ckpt"))
    assert names == ["step_000002.ckpt", "step_000004.ckpt", "step_000006.ckpt"]
    for name in names:
        assert safe_torch_load(reference / "checkpoints" / name)["global_step"] == int(name[5:11])
    assert sorted({step for (key, step) in metrics(reference) if key == "val/mean_mIoU"}) == [2, 5]  # after 3, 6


def test_kill_during_a_validation_resumes_into_that_validation(data, reference, tmp_path):
    """Step 3 is checkpointed after its validation, so kill -9 during it resumes from step 2 and repeats both."""
    run = tmp_path / "run"
    kill = inject("kill", "KillAt", step=3, during_validation=True)
    code, out = finish(launch(run, base(data, tmp_path / "logs", f"{CKPT_EVERY}=1", *kill)))
    assert code == -signal.SIGKILL, out[-3000:]
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))
    assert ckpts == ["last.ckpt", "step_000001.ckpt", "step_000002.ckpt"], ckpts
    last = run / "checkpoints" / "last.ckpt"
    train(compose_config(base(data, tmp_path / "logs", f"{CKPT_EVERY}=1", f"ckpt_path={last}"), run))
    assert only(metrics(run), "val/") == only(metrics(reference), "val/")
    # what the killed run logged up to its newest checkpoint is on disk; the resumed run logged the rest
    assert only(metrics(run), "train/loss") == only(metrics(reference), "train/loss")
    assert_same_weights(reference / "checkpoints" / "last.ckpt", last)
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == [f"step_{s:06d}.ckpt" for s in range(1, 7)]


# --------------------------------------------------------------------------- 4. DDP


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_ddp_resume_after_kill_9_is_exact(tmp_path):
    """2 CPU processes (gloo): each rank's RNG and data position are saved and restored by that rank. 8 images, 2
    per batch and rank: 2 steps per epoch; killed when step 4 starts, the run resumes mid-epoch from step 3."""
    data = tmp_path / "data"
    write_dg_benchmark(data / "smoke", num_images=8, size=(128, 64), seed=0)
    overrides = base(data, tmp_path / "logs", f"{CKPT_EVERY}=1")
    overrides += ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true"]
    threads = {"OMP_NUM_THREADS": "1"}
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    # both at once: each waits for its second rank to start, and the other run uses that time
    runs = [
        launch(straight, overrides, **threads),
        launch(crashed, [*overrides, *inject("kill", "KillAt", step=3)], **threads),
    ]
    (code, out), (killed, out_killed) = [finish(proc) for proc in runs]
    assert code == 0, out[-3000:]
    assert killed == -signal.SIGKILL, out_killed[-3000:]
    last = crashed / "checkpoints" / "last.ckpt"
    saved = safe_torch_load(last)
    assert saved["global_step"] == 3 and len(saved["rng"]["ranks"]) == 2
    positions = saved["DGDataModule"]["ranks"]
    assert [(p["rank"], p["epoch"], p["batches"]) for p in positions] == [(0, 1, 1), (1, 1, 1)]
    assert not torch.equal(saved["rng"]["ranks"][0]["torch"], saved["rng"]["ranks"][1]["torch"])
    code, out = finish(launch(crashed, [*overrides, f"ckpt_path={last}"], **threads))
    assert code == 0, out[-3000:]
    assert_same_weights(straight / "checkpoints" / "last.ckpt", last)
    # the killed run's logs (flushed with each checkpoint) and the resumed run's: the uninterrupted run's, exactly
    assert only(metrics(crashed), "train/loss") == only(metrics(straight), "train/loss")
    assert only(metrics(crashed), "val/") == only(metrics(straight), "val/")


# --------------------------------------------------------------------------- 5. silent data problems


def _edit_label(path: Path, fn) -> None:
    label = np.array(Image.open(path))
    Image.fromarray(fn(label).astype(np.uint8), mode="L").save(path)


def test_label_values_outside_the_mapping_and_orphans_are_warned_once_per_file(tmp_path):
    root = write_dg_benchmark(tmp_path, num_images=4, size=(128, 64), seed=0, kinds=("cityscapes",)) / "cityscapes"
    labels = sorted((root / "gtFine" / "train").rglob("*_labelTrainIds.png"))
    _edit_label(labels[0], lambda lab: np.where(np.arange(lab.size).reshape(lab.shape) < 7, 77, lab))
    _edit_label(labels[1], lambda lab: np.full_like(lab, 255))
    orphan = labels[2].parent / "zurich_999999_000019_gtFine_labelTrainIds.png"
    orphan.write_bytes(labels[2].read_bytes())
    with pytest.warns(DataWarning, match=r"1 label files under .* have no image and are not used \(e\.g\. .*999999"):
        dataset = CityscapesDataset(root, split="train")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            for i in range(len(dataset)):
                dataset.load(i)
    messages = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert len(messages) == 2, messages  # once per file, not once per load
    assert any("7 of 8,192 pixels have values outside the train IDs encoding (77)" in m for m in messages)
    assert any("every pixel is ignore (255)" in m for m in messages)


def test_a_domain_without_labelled_pixels_stops_the_run(data, tmp_path):
    bad = tmp_path / "data"
    write_dg_benchmark(bad / "smoke", num_images=4, size=(128, 64), seed=0)
    for path in (bad / "smoke" / "acdc" / "gt" / "snow").rglob("*.png"):
        _edit_label(path, lambda lab: np.full_like(lab, 255))
    with pytest.raises(DataError, match=r"validation: no label of 1 target domain\(s\) has a labelled pixel") as info:
        train(compose_config(base(bad, tmp_path / "logs"), tmp_path / "run"))
    assert "snow: ACDCDataset at" in str(info.value)


def test_a_training_split_without_labelled_pixels_stops_the_run(tmp_path):
    bad = tmp_path / "data"
    write_dg_benchmark(bad / "smoke", num_images=4, size=(128, 64), seed=0)
    for path in (bad / "smoke" / "cityscapes" / "gtFine" / "train").rglob("*.png"):
        _edit_label(path, lambda lab: np.full_like(lab, 255))
    with pytest.raises(DataError, match=r"no training label had a labelled pixel in a whole epoch \(epoch 0\)"):
        train(compose_config(base(bad, tmp_path / "logs"), tmp_path / "run"))


def test_no_full_training_batch_is_an_error_not_an_empty_run(data, tmp_path):
    with pytest.raises(DataError, match=r"the training split has 4 images .* data.batch_size=8 .* no full batch"):
        train(compose_config(base(data, tmp_path / "logs", "data.batch_size=8"), tmp_path))


def test_running_out_of_data_before_max_steps_fails_the_run(data, tmp_path):
    with pytest.raises(IncompleteRunError, match=r"training stopped at step 4 of max_steps=6: the data ran out"):
        train(compose_config(base(data, tmp_path / "logs", "trainer.max_epochs=2"), tmp_path))


def test_a_skipped_validation_fails_the_run(data, tmp_path):
    """A checkpoint written before its step's validation (Lightning's ModelCheckpoint) resumes past it."""
    plain = "callbacks.model_checkpoint._target_=lightning.pytorch.callbacks.ModelCheckpoint"
    lightning_ckpt = [plain, f"{CKPT_EVERY}=3"]
    kill = inject("kill", "KillAt", step=3, during_validation=True)
    run = tmp_path / "run"
    code, out = finish(launch(run, base(data, tmp_path / "logs", *lightning_ckpt, *kill)))
    assert code == -signal.SIGKILL, out[-3000:]
    last = run / "checkpoints" / "last.ckpt"
    with pytest.raises(IncompleteRunError, match=r"the validations after steps 3 .* did not run"):
        train(compose_config(base(data, tmp_path / "logs", *lightning_ckpt, f"ckpt_path={last}"), run))


def test_datamodule_resumes_each_rank_and_other_world_sizes():
    """Unit level: a position saved by 2 ranks is restored per rank; by 1 rank, each rank skips its share."""
    dm = DGDataModule(source=lambda: list(range(16)), targets={"t": lambda: []}, batch_size=2)
    dm.source = list(range(16))
    ranks = [{"epoch": 1, "batches": 3, "batch_size": 2, "size": 16, "rank": r, "world_size": 2} for r in (0, 1)]
    for world, expected in ((2, 6), (1, 12), (4, 3)):
        dm.load_state_dict({"epoch": 1, "batches": 3, "ranks": ranks})
        assert dm._resume_skip(ResumableSampler(16, rank=0, world_size=world)) == expected
    dm.load_state_dict({"epoch": 1, "batches": 3})  # written before per-rank positions: as then
    assert dm._resume_skip(ResumableSampler(16, rank=1, world_size=2)) == 6
    at_end = [{**r, "batches": 4} for r in ranks]  # 8 images per rank = 4 batches: saved at the epoch's end
    dm.load_state_dict({"epoch": 1, "batches": 4, "ranks": at_end})
    assert dm._resume_skip(ResumableSampler(16, rank=0, world_size=2)) == 0
