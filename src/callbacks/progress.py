"""Progress of a step-based run: the global step out of ``max_steps``, rate, ETA, loss and learning rate.

Lightning's own bars count batches per epoch (``Epoch 7/-2`` for a run with ``max_epochs=-1``) and print nothing
useful into a log file. :class:`StepProgress` replaces them (it switches the trainer's bar off) and shows:

- on a terminal: one bar over the global steps, ``step 1200/40000 (3.0%) | 2.31 it/s | ETA 4:40:12 | loss 12.345 |
  lr 1.0e-04``, and a second one over the validation (or test) batches while they run;
- when stdout is not a terminal (a cluster log, a pipe): that same text as plain lines, the first step, then every
  ``every_n_steps`` steps or ``every_n_seconds`` seconds, and the last step; one line when a validation starts, one
  every ``every_n_seconds`` during it and one when it ends.

``trainer.enable_progress_bar=false`` silences it too. Only global rank zero prints.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections import deque
from typing import IO, Any

import lightning as L
from lightning.pytorch.callbacks import Callback

__all__ = ["StepProgress", "format_duration", "format_rate", "format_status"]


def format_duration(seconds: float | None) -> str:
    """``H:MM:SS`` (``D days, H:MM:SS`` past a day); ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    total = int(round(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{days} day{'s' if days > 1 else ''}, {clock}" if days else clock


def format_rate(rate: float | None) -> str:
    """Steps per second, or seconds per step when slower than one a second (``2.31 it/s``, ``4.20 s/it``)."""
    if rate is None or not math.isfinite(rate) or rate <= 0:
        return "? it/s"
    return f"{rate:.2f} it/s" if rate >= 1 else f"{1 / rate:.2f} s/it"


def format_status(
    step: int,
    total: int | None,
    rate: float | None = None,
    loss: float | None = None,
    lr: float | None = None,
    unit: str = "step",
) -> str:
    """``step 1200/40000 (3.0%) | 2.31 it/s | ETA 4:40:12 | loss 12.345 | lr 1.0e-04``; the parts unknown are left
    out (no total: no percentage and no ETA)."""
    parts = [f"{unit} {step}/{total} ({100.0 * step / total:.1f}%)" if total else f"{unit} {step}"]
    if rate is not None:
        parts.append(format_rate(rate))
        if total:
            parts.append(f"ETA {format_duration((total - step) / rate if rate > 0 else None)}")
    if loss is not None:
        parts.append(f"loss {loss:.3f}")
    if lr is not None:
        parts.append(f"lr {lr:.1e}")
    return " | ".join(parts)


class _Rate:
    """Steps per second over a sliding window of the latest ``window`` updates (wall clock, validations included,
    so the ETA counts them too)."""

    def __init__(self, window: int = 50) -> None:
        self.samples: deque[tuple[float, int]] = deque(maxlen=window + 1)

    def reset(self) -> None:
        self.samples.clear()

    def update(self, now: float, step: int) -> None:
        self.samples.append((now, step))

    @property
    def value(self) -> float | None:
        if len(self.samples) < 2:
            return None
        (t0, s0), (t1, s1) = self.samples[0], self.samples[-1]
        return (s1 - s0) / (t1 - t0) if t1 > t0 and s1 > s0 else None


class StepProgress(Callback):
    """Global-step progress (bar on a terminal, plain lines otherwise) for the training, validation and test loops.

    Args:
        mode: ``auto`` (a bar when the stream is a terminal, lines otherwise), ``bar`` or ``lines``.
        every_n_steps: a plain line every this many steps (None: by time only).
        every_n_seconds: a plain line at least this often, in training and in validation/test (None: by steps only).
        window: the updates the rate (and so the ETA) is measured over.
        stream: where to write; None is ``sys.stdout`` at the time of writing.
    """

    def __init__(
        self,
        mode: str = "auto",
        every_n_steps: int | None = None,
        every_n_seconds: float | None = 60.0,
        window: int = 50,
        stream: IO[str] | None = None,
    ) -> None:
        if mode not in ("auto", "bar", "lines"):
            raise ValueError(f"StepProgress: mode must be auto, bar or lines, not {mode!r}")
        self.mode = mode
        self.every_n_steps = every_n_steps
        self.every_n_seconds = every_n_seconds
        self.rate = _Rate(window)
        self._stream = stream
        self.enabled = True
        self._bar: Any = None
        self._eval_bar: Any = None
        self._loss: Any = None
        self._last_step = -1  # the step of the latest line / bar refresh
        self._seen_step = -1  # the latest global step seen (gradient accumulation repeats one)
        self._last_time = 0.0
        self._eval_name = "validation"
        self._first = True
        self._eval_done = 0
        self._eval_total = 0
        self._eval_start = 0.0
        self._eval_last = 0.0

    # --- helpers -------------------------------------------------------------------------------------------------
    @property
    def stream(self) -> IO[str]:
        return self._stream if self._stream is not None else sys.stdout

    def use_bar(self) -> bool:
        if self.mode != "auto":
            return self.mode == "bar"
        isatty = getattr(self.stream, "isatty", None)
        if not (isatty and isatty()):
            return False
        try:  # a terminal of width 0 (a pty nobody sized) would show an empty bar: lines instead
            return os.get_terminal_size(self.stream.fileno()).columns > 0
        except (AttributeError, OSError, ValueError):
            return True

    def _write(self, text: str) -> None:
        if self._bar is not None or self._eval_bar is not None:
            from tqdm import tqdm

            tqdm.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    @staticmethod
    def total_steps(trainer: L.Trainer) -> int | None:
        if trainer.max_steps is not None and trainer.max_steps > 0:
            return int(trainer.max_steps)
        estimated = trainer.estimated_stepping_batches
        return int(estimated) if isinstance(estimated, int) or math.isfinite(estimated) else None

    def _loss_value(self) -> float | None:
        loss = self._loss
        if loss is None:
            return None
        try:
            return float(loss)
        except (TypeError, ValueError, RuntimeError):
            return None

    @staticmethod
    def _lr(trainer: L.Trainer) -> float | None:
        lrs = [g["lr"] for opt in trainer.optimizers for g in opt.param_groups if "lr" in g]
        return float(max(lrs)) if lrs else None

    def status(self, trainer: L.Trainer) -> str:
        return format_status(
            trainer.global_step, self.total_steps(trainer), self.rate.value, self._loss_value(), self._lr(trainer)
        )

    # --- setup ---------------------------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        bar = trainer.progress_bar_callback
        if bar is None:  # trainer.enable_progress_bar=false: quiet
            self.enabled = False
            return
        self.enabled = trainer.is_global_zero
        bar.disable()  # this replaces Lightning's per-epoch bar

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._close_eval_bar()
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # --- training ------------------------------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled:
            return
        self.rate.reset()
        now = time.monotonic()
        self.rate.update(now, trainer.global_step)
        self._last_step = self._seen_step = trainer.global_step
        self._last_time = now
        self._first = True
        total = self.total_steps(trainer)
        if self.use_bar():
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                initial=trainer.global_step,
                file=self.stream,
                dynamic_ncols=True,
                bar_format="train {bar:24}| {desc}",
                leave=True,
            )
            self._bar.set_description_str(self.status(trainer))
        else:
            self._write(f"training from step {trainer.global_step} to {total if total else '?'}")

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self.enabled:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None and hasattr(loss, "detach"):
            loss = loss.detach()
        self._loss = loss
        step, now = trainer.global_step, time.monotonic()
        if step == self._seen_step:
            return  # gradient accumulation: no new optimiser step
        self._seen_step = step
        self.rate.update(now, step)
        if self._bar is not None:
            if now - self._last_time >= self._bar.mininterval or step >= (self.total_steps(trainer) or math.inf):
                self._bar.set_description_str(self.status(trainer), refresh=False)
                self._bar.update(step - self._bar.n)
                self._last_time = now
            self._last_step = step
            return
        total = self.total_steps(trainer)
        due = (
            self._first
            or (total is not None and step >= total)
            or (self.every_n_steps is not None and step - self._last_step >= self.every_n_steps)
            or (self.every_n_seconds is not None and now - self._last_time >= self.every_n_seconds)
        )
        if due and step != self._last_step:
            self._write(self.status(trainer))
            self._last_step, self._last_time, self._first = step, now, False

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._bar is not None:
            self._bar.set_description_str(self.status(trainer), refresh=False)
            self._bar.update(trainer.global_step - self._bar.n)
            self._bar.close()
            self._bar = None

    # --- validation / test ---------------------------------------------------------------------------------------
    def _eval_start_(self, trainer: L.Trainer, name: str, batches: Any) -> None:
        if not self.enabled or trainer.sanity_checking:
            return
        self._eval_total = int(sum(b for b in (batches or []) if math.isfinite(b)))
        self._eval_done = 0
        self._eval_start = self._eval_last = time.monotonic()
        self._eval_name = name
        where = f" at step {trainer.global_step}" if name == "validation" else ""
        if self.use_bar():
            from tqdm import tqdm

            self._eval_bar = tqdm(
                total=self._eval_total or None,
                file=self.stream,
                dynamic_ncols=True,
                leave=False,
                position=1 if self._bar is not None else 0,
                desc=f"{name}{where}",
                unit="batch",
            )
        else:
            self._write(f"{name}{where}: {self._eval_total} batches")

    def _eval_batch(self, trainer: L.Trainer) -> None:
        if not self.enabled or trainer.sanity_checking:
            return
        self._eval_done += 1
        if self._eval_bar is not None:
            self._eval_bar.update(1)
            return
        now = time.monotonic()
        if self.every_n_seconds is not None and now - self._eval_last >= self.every_n_seconds:
            elapsed = now - self._eval_start
            rate = self._eval_done / elapsed if elapsed > 0 else None
            self._write(format_status(self._eval_done, self._eval_total or None, rate, unit=self._eval_name))
            self._eval_last = now

    def _close_eval_bar(self) -> None:
        if self._eval_bar is not None:
            self._eval_bar.close()
            self._eval_bar = None

    def _eval_end(self, trainer: L.Trainer) -> None:
        if not self.enabled or trainer.sanity_checking:
            return
        had_bar = self._eval_bar is not None
        self._close_eval_bar()
        if not had_bar:
            took = format_duration(time.monotonic() - self._eval_start)
            self._write(f"{self._eval_name} done: {self._eval_done} batches in {took}")

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_start_(trainer, "validation", trainer.num_val_batches)

    def on_validation_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        self._eval_batch(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_end(trainer)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_start_(trainer, "test", trainer.num_test_batches)

    def on_test_batch_end(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        self._eval_batch(trainer)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_end(trainer)
