"""SIGTERM / SIGUSR1 (SLURM preemption, time limit): save a resumable checkpoint of the current step, requeue, exit
non-zero.

What Lightning does by itself falls short here (lightning/pytorch/trainer/connectors/signal_connector.py):

- SIGTERM only sets a flag; the loops then raise ``SIGTERMException``, a ``SystemExit`` without a code: the process
  exits with status 0 and saves nothing, so a preempted run looks like a finished one;
- a checkpoint is saved only under SLURM with ``auto_requeue`` and only on the requeue signal (SIGUSR1), from
  inside the signal handler, i.e. at whatever point of a training step the signal arrives, to
  ``hpc_ckpt_<n>.ckpt`` in the run directory, which a requeued Hydra run (a new timestamped directory) never finds.

:class:`Preemption` replaces those handlers while training and testing. The handler only records the signal; at the
next safe point (the end of the training step, or the current validation batch) every rank agrees, the state of the
current step is written atomically to ``last.ckpt``, the job is requeued under SLURM the way Lightning's
``SLURMEnvironment`` does it (``scontrol requeue <job>`` on global rank 0, on its ``requeue_signal`` with
``auto_requeue``), a resume record is left for the requeued job, and the process exits with status 128 + the
signal number. See README "W&B, multi-GPU, SLURM" and docs/reliability.md.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.trainer.states import TrainerFn

from src.callbacks._dist import any_rank
from src.callbacks.checkpoint import StepCheckpoint, mark_validation_pending, validation_due
from src.utils.checkpoint import atomic_write

log = logging.getLogger(__name__)


class Preempted(SystemExit):
    """The run stopped on a signal after saving what is needed to resume; ``code`` is 128 + the signal number."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(128 + int(signum))
        self.message = message
        self.signum = int(signum)

    def __str__(self) -> str:
        return self.message


def _signal(value: str | int | signal.Signals) -> signal.Signals:
    """``"SIGUSR1"``, ``"USR1"`` or ``10`` -> ``signal.SIGUSR1``."""
    if isinstance(value, signal.Signals):
        return value
    if isinstance(value, int):
        return signal.Signals(value)
    name = str(value).strip().upper()
    name = name if name.startswith("SIG") else f"SIG{name}"
    try:
        return signal.Signals[name]
    except KeyError:
        raise ValueError(f"unknown signal {value!r} (e.g. SIGTERM, SIGUSR1, USR2)") from None


def slurm_job_key(env: dict[str, str] | None = None) -> str | None:
    """The id ``scontrol requeue`` takes for this job (``<array job>_<task>`` for an array task), or None outside
    a SLURM batch job (an interactive ``srun --pty bash`` session does not count, as for Lightning)."""
    env = os.environ if env is None else env
    if env.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return None
    array, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    job = f"{array}_{task}" if array and task else env.get("SLURM_JOB_ID")
    if not job or not re.fullmatch(r"[0-9_]+", job):
        return None
    return job


def resume_record_path(resume_dir: str | os.PathLike, job: str) -> Path:
    return Path(resume_dir) / f"slurm-{job}.json"


def requeue(job: str) -> tuple[bool, str]:
    """``scontrol requeue <job>`` (what Lightning's SLURM signal handler runs); (done, what happened)."""
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        return False, "scontrol was not found on PATH"
    except subprocess.TimeoutExpired:
        return False, "scontrol requeue did not answer within 60 s"
    if result.returncode != 0:
        return False, f"scontrol requeue {job} failed ({result.returncode}): {result.stderr.strip()[:300]}"
    return True, f"requeued SLURM job {job}"


class Preemption(Checkpoint):
    """Turns SIGTERM and the requeue signal into "checkpoint the current step, requeue under SLURM, exit non-zero".

    Args:
        signals: the signals handled (names like ``SIGTERM``/``USR1``); the requeue signal is always added.
        requeue_signal: the signal that also requeues the job under SLURM (``#SBATCH --signal=USR1@90``); default:
            the ``requeue_signal`` of Lightning's ``SLURMEnvironment`` plugin (SIGUSR1).
        auto_requeue: requeue the SLURM job on ``requeue_signal``; default: the plugin's ``auto_requeue`` (True).
        resume_dir: where a resume record ``slurm-<job>.json`` (checkpoint and run directory) is left for the
            requeued job, which ``src.train`` then resumes automatically; null: no record.

    A signal during training is acted on at the end of the current step (after the step's checkpoint, if any), or
    during a validation at the end of the current validation batch: the checkpoint then records that the step's
    validation is still to run, and the resumed run runs it. A signal during the final validation (at max_steps)
    lets it finish: nothing can resume into it. A signal during ``test`` stops it (training is complete by then).
    Lightning orders checkpoint callbacks last, and this one after ModelCheckpoint (it must come after it in the
    callbacks config), so a step's regular checkpoint is written before a preemption is acted on.
    """

    def __init__(
        self,
        signals: list[str] | tuple[str, ...] = ("SIGTERM", "SIGUSR1"),
        requeue_signal: str | None = None,
        auto_requeue: bool | None = None,
        resume_dir: str | None = None,
    ) -> None:
        self.signals = [_signal(s) for s in signals]
        self._requeue_signal = _signal(requeue_signal) if requeue_signal is not None else None
        self._auto_requeue = auto_requeue
        self.resume_dir = resume_dir
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        self._finishing_validation = False
        self._pending_mark: bool | None = None  # set while saving a checkpoint whose validation is still due

    # ------------------------------------------------------------------ handlers
    def _requeue_settings(self, trainer: L.Trainer) -> tuple[signal.Signals, bool]:
        env = getattr(trainer._accelerator_connector, "cluster_environment", None)
        plugin = env if isinstance(env, SLURMEnvironment) else None
        sig = self._requeue_signal or (plugin.requeue_signal if plugin and plugin.requeue_signal else signal.SIGUSR1)
        auto = self._auto_requeue if self._auto_requeue is not None else (plugin.auto_requeue if plugin else True)
        return _signal(sig), bool(auto)

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum
            log.warning(
                "received %s: the run saves a checkpoint of the current step and stops", signal.Signals(signum).name
            )

    def _install(self, trainer: L.Trainer) -> None:
        if self._previous or threading.current_thread() is not threading.main_thread():
            return
        requeue_signal, _ = self._requeue_settings(trainer)
        for sig in dict.fromkeys([*self.signals, requeue_signal]):
            self._previous[sig] = signal.signal(sig, self._handler)
        if getattr(trainer, "received_sigterm", False) and self.received is None:
            self.received = signal.SIGTERM  # arrived while Lightning's own handler was in place

    def _uninstall(self) -> None:
        for sig, handler in self._previous.items():
            if handler is not None:
                signal.signal(sig, handler)
        self._previous = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install(trainer)  # after Lightning's own (registered just before the loops start)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._uninstall()

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install(trainer)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._uninstall()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._uninstall()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._uninstall()

    # ------------------------------------------------------------------ safe points
    def _requested(self, trainer: L.Trainer) -> bool:
        return any_rank(trainer, self.received is not None)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._requested(trainer):
            return
        if validation_due(trainer) and trainer.global_step >= trainer.max_steps > 0:
            self._finish_validation(trainer)  # nothing could resume into the final validation: let it run
            return
        # the loop logs this step's metrics after this hook: log them now, the resumed run starts at the next step
        connector = getattr(trainer, "_logger_connector", None)
        if connector is not None and hasattr(connector, "update_train_step_metrics"):
            connector.update_train_step_metrics()
        self._stop(trainer, pending_validation=validation_due(trainer), in_validation=False)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        if self._finishing_validation or not self._requested(trainer):
            return
        if trainer.global_step >= trainer.max_steps > 0:
            self._finish_validation(trainer)
            return
        self._stop(trainer, pending_validation=True, in_validation=True)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        if self._finishing_validation or self._requested(trainer):
            self._stop(trainer)  # after StepCheckpoint wrote this step's checkpoint, if it is a checkpoint step

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        if not self._requested(trainer):
            return
        signum = self.received or signal.SIGTERM
        ckpt = getattr(trainer.checkpoint_callback, "last_model_path", "") or "<run>/checkpoints/last.ckpt"
        message = (
            f"stopped by {signal.Signals(signum).name} during the test: the test metrics were not computed (training, "
            f"if this run trained, had completed: its weights are in {ckpt}).\n  To get them: python -m src.eval "
            f"experiment=<the same experiment> ckpt_path={ckpt}"
        )
        if trainer.is_global_zero:
            log.error(message)
        raise Preempted(message, signum)

    def _finish_validation(self, trainer: L.Trainer) -> None:
        if not self._finishing_validation and trainer.is_global_zero:
            log.warning(
                "stop requested during the final validation (step %d = max_steps): letting it finish, then saving",
                trainer.global_step,
            )
        self._finishing_validation = True

    # ------------------------------------------------------------------ stop
    def _stop(self, trainer: L.Trainer, pending_validation: bool = False, in_validation: bool = False) -> None:
        signum = self.received or signal.SIGTERM
        name = signal.Signals(signum).name
        step = trainer.global_step
        path = self._save(trainer, pending_validation, in_validation)
        requeue_signal, auto = self._requeue_settings(trainer)
        job = slurm_job_key()
        requeued = ""
        if trainer.is_global_zero:
            if job and self.resume_dir:
                self._write_record(job, path, trainer, step, name)
            if job and auto and signum == requeue_signal:
                done, what = requeue(job)
                requeued = f"\n  {what}" + ("; the requeued job resumes from this checkpoint" if done else "")
                if not done:
                    requeued += f"; requeue it by hand (scontrol requeue {job}) or resume as below"
        pending = " (its validation had not finished: the resumed run runs it first)" if pending_validation else ""
        message = (
            f"stopped by {name} at step {step} of max_steps={trainer.max_steps}: saved a resumable checkpoint of "
            f"step {step}{pending} to {path}{requeued}\n"
            f"  resume: python -m src.train <the same overrides> ckpt_path={path} "
            f"hydra.run.dir={trainer.default_root_dir}"
        )
        if job and self.resume_dir:
            record = resume_record_path(self.resume_dir, job)
            message += f"\n  (a requeued SLURM job {job} resumes by itself, from {record})"
        if trainer.is_global_zero:
            log.error(message)
        raise Preempted(message, signum)

    def _save(self, trainer: L.Trainer, pending_validation: bool, in_validation: bool) -> str:
        callback = trainer.checkpoint_callback
        if (
            isinstance(callback, StepCheckpoint)
            and not pending_validation
            and callback._last_global_step_saved == trainer.global_step
            and callback.last_model_path
        ):
            return callback.last_model_path  # this step's regular checkpoint has just been written
        self._pending_mark = in_validation if pending_validation else None
        try:
            if isinstance(callback, StepCheckpoint):
                return callback.write_last(trainer)
            directory = getattr(callback, "dirpath", None) or os.path.join(trainer.default_root_dir, "checkpoints")
            path = os.path.join(directory, "last.ckpt")
            trainer.save_checkpoint(path)
            return path
        finally:
            self._pending_mark = None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._pending_mark is not None:
            mark_validation_pending(checkpoint, in_validation=self._pending_mark)

    def _write_record(self, job: str, ckpt: str, trainer: L.Trainer, step: int, signal_name: str) -> None:
        record = {
            "ckpt_path": str(Path(ckpt).resolve()),
            "output_dir": str(Path(trainer.default_root_dir).resolve()),
            "step": step,
            "signal": signal_name,
            "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        with atomic_write(resume_record_path(self.resume_dir, job)) as f:
            f.write(json.dumps(record, indent=2).encode())
