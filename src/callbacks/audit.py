"""What a run trained and validated, checked against what its config asked for.

:class:`RunAudit` counts the labelled pixels of every split as the batches go by (a split with none stops the run:
its metrics or its gradients would be silently empty) and records each validation; :func:`check_run` is called by
``src.train`` after ``fit`` and raises :class:`~src.callbacks.errors.IncompleteRunError` when max_steps was not
reached or a scheduled validation is missing, so that a run exits 0 only when it did what it was asked to.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, Timer
from lightning.pytorch.trainer.states import TrainerFn

from src.callbacks.errors import DataError, IncompleteRunError

log = logging.getLogger(__name__)

IGNORE_INDEX = 255


def _describe(dataset: Any) -> str:
    root = getattr(dataset, "root", None)
    layout = getattr(dataset, "layout", None)
    text = f"{type(dataset).__name__} at {root}" if root is not None else type(dataset).__name__
    if layout is not None and hasattr(layout, "describe"):
        text += f" ({layout.describe()})"
    return text


def _labelled(batch: Any, ignore_index: int) -> torch.Tensor | None:
    labels = batch.get("label") if isinstance(batch, dict) else None
    if not isinstance(labels, torch.Tensor):
        return None
    return (labels != ignore_index).sum()


class RunAudit(Callback):
    """Records the steps validated (kept in checkpoints, so a resumed run knows the earlier ones) and the last
    validation metrics, and raises :class:`~src.callbacks.errors.DataError` for a split without labelled pixels:

    - a validation or test domain whose labels are all ignore, at the end of that evaluation (its mIoU would be NaN
      and silently left out of ``mean_mIoU``);
    - the training split, at the end of the first epoch in which no batch had a labelled pixel (or at the end of
      training when it ended within its first epoch).

    Per-file problems (label values outside the encoding, an all-ignore label, label files without an image) are
    warned about by the datasets themselves (src/data/datasets/base.py).
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX) -> None:
        self.ignore_index = ignore_index
        self.validated_steps: list[int] = []
        self.val_metrics: dict[str, float] = {}
        self.started_at_step: int | None = None
        self.restored = False
        self.epochs_checked = 0
        self._epoch: int | None = None
        self._carried = 0  # labelled training pixels of the current epoch before a resume
        self._train: torch.Tensor | None = None
        self._train_batches = 0
        self._eval: dict[int, torch.Tensor] = {}

    # ------------------------------------------------------------------ training split
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started_at_step = trainer.global_step

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._epoch != trainer.current_epoch:
            self._epoch, self._carried = trainer.current_epoch, 0
        self._train, self._train_batches = None, 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        count = _labelled(batch, self.ignore_index)
        if count is not None:
            self._train = count if self._train is None else self._train + count  # no host sync per step
            self._train_batches += 1

    def _train_total(self, trainer: L.Trainer) -> int:
        local = self._train if self._train is not None else torch.zeros((), device=pl_device(trainer))
        total = trainer.strategy.reduce(local.float(), reduce_op="sum") if trainer.world_size > 1 else local
        return int(total) + self._carried

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        total = self._train_total(trainer)
        if total == 0 and self._train_batches:
            self._raise_train(trainer, f"in a whole epoch (epoch {trainer.current_epoch})")
        self.epochs_checked += 1
        self._carried, self._train, self._train_batches = 0, None, 0
        self._epoch = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.epochs_checked == 0 and self._train_batches and self._train_total(trainer) == 0:
            self._raise_train(trainer, f"in the {self._train_batches} training batches of this run")

    def _raise_train(self, trainer: L.Trainer, where: str) -> None:
        source = getattr(trainer.datamodule, "source", None)
        raise DataError(
            f"no training label had a labelled pixel {where}: every label pixel of the training split "
            f"{_describe(source)} is ignore ({self.ignore_index}), so nothing was learnt.\n"
            "  The datasets warned about each such file above (values outside the label encoding, or all-ignore "
            "labels).\n  fix: check the labels and their encoding: python scripts/check_data_layout.py <data root> "
            "--full"
        )

    # ------------------------------------------------------------------ evaluation splits
    def _count_eval(self, batch: Any, dataloader_idx: int) -> None:
        count = _labelled(batch, self.ignore_index)
        if count is not None:
            previous = self._eval.get(dataloader_idx)
            self._eval[dataloader_idx] = count if previous is None else previous + count

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._count_eval(batch, dataloader_idx)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._count_eval(batch, dataloader_idx)

    def _check_eval(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        counts, self._eval = self._eval, {}
        if trainer.sanity_checking:
            return
        empty = [idx for idx, count in sorted(counts.items()) if int(count) == 0]
        if not empty:
            return
        names = list(getattr(pl_module, "domains", []))
        datamodule = trainer.datamodule
        lines = []
        for idx in empty:
            name = names[idx] if idx < len(names) else f"dataloader {idx}"
            dataset = getattr(datamodule, "targets", {}).get(name) if datamodule is not None else None
            lines.append(f"{name}: {_describe(dataset)}")
        raise DataError(
            f"{stage}: no label of {len(empty)} target domain(s) has a labelled pixel, so their mIoU would be NaN "
            "and silently left out of mean_mIoU:\n  " + "\n  ".join(lines) + "\n  The datasets warned about each "
            "such file above.\n  fix: check these labels and their encoding: python scripts/check_data_layout.py "
            "<data root> --full (or drop the domain: data.targets.<name>=null)"
        )

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check_eval(trainer, pl_module, "validation")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check_eval(trainer, pl_module, "test")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        if trainer.global_step not in self.validated_steps:
            self.validated_steps.append(trainer.global_step)
        self.val_metrics = {
            k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/") and v.numel() == 1
        }

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        trainer = getattr(self, "_trainer", None)
        if trainer is not None and trainer.world_size > 1:  # every rank dumps the checkpoint: a collective is safe
            carried = self._train_total(trainer)
        else:
            carried = self._carried + (int(self._train) if self._train is not None else 0)
        return {
            "validated_steps": list(self.validated_steps),
            "val_metrics": dict(self.val_metrics),
            "epochs_checked": self.epochs_checked,
            "epoch": self._epoch,
            "train_labelled": carried,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.restored = True
        self.validated_steps = [int(s) for s in state_dict.get("validated_steps", [])]
        self.val_metrics = dict(state_dict.get("val_metrics", {}))
        self.epochs_checked = int(state_dict.get("epochs_checked", 0))
        self._epoch = state_dict.get("epoch")
        self._carried = int(state_dict.get("train_labelled", 0))


def pl_device(trainer: L.Trainer) -> torch.device:
    return trainer.strategy.root_device


# ---------------------------------------------------------------------- the end-of-run check


def expected_validation_steps(trainer: L.Trainer, last_step: int) -> list[int] | None:
    """The steps after which Lightning's loop validates in a run of ``last_step`` steps (as
    ``_should_check_val_fx`` decides, one batch per step); None when that cannot be told in advance (time-based
    validation, gradient accumulation, an iterable dataset)."""
    if not trainer.enable_validation:
        return []
    batches = trainer.num_val_batches
    if not (sum(batches) if isinstance(batches, list) else batches):
        return []
    per_epoch, every = trainer.num_training_batches, trainer.val_check_batch
    if (
        getattr(trainer, "_val_check_time_interval", None) is not None
        or trainer.accumulate_grad_batches != 1
        or every is None
        or not isinstance(per_epoch, int)
        or per_epoch <= 0
    ):
        return None
    n_epochs = trainer.check_val_every_n_epoch
    steps = []
    for step in range(1, last_step + 1):
        epoch, batch = divmod(step - 1, per_epoch)
        if n_epochs is not None and (epoch + 1) % n_epochs != 0:
            continue
        if isinstance(every, float) and math.isinf(every):
            due = batch + 1 == per_epoch
        else:
            current = step - 1 if n_epochs is None else batch
            due = (current + 1) % int(every) == 0
        if due:
            steps.append(step)
    return steps


def _stop_reason(trainer: L.Trainer) -> tuple[bool, str]:
    """(asked for?, why) training stopped before max_steps."""
    for callback in trainer.callbacks:
        if isinstance(callback, EarlyStopping) and callback.stopped_epoch:
            return True, f"early stopping ({callback.monitor}) stopped it"
    for callback in trainer.callbacks:
        if isinstance(callback, Timer) and callback.time_remaining() is not None and callback.time_remaining() <= 0:
            return False, (
                "trainer.max_time ran out; fix: resume from <run>/checkpoints/last.ckpt (ckpt_path=…) or raise "
                "trainer.max_time"
            )
    max_epochs = trainer.max_epochs
    if max_epochs is not None and max_epochs >= 0 and trainer.current_epoch >= max_epochs:
        per_epoch = trainer.num_training_batches
        return False, (
            f"the data ran out: trainer.max_epochs={max_epochs} epochs of {per_epoch} batches end at step "
            f"{trainer.global_step}; fix: trainer.max_epochs=-1 (training is step-based), or lower trainer.max_steps"
        )
    if trainer.num_training_batches == 0:
        return False, "there was no training batch"
    return False, "trainer.should_stop was set by a callback without saying why"


def check_run(trainer: L.Trainer, audit: RunAudit | None) -> list[str]:
    """Raise :class:`IncompleteRunError` unless the finished ``fit`` reached max_steps (or was stopped early on
    purpose) and ran every validation its schedule asked for; returns notes worth logging."""
    if trainer.fast_dev_run:
        return ["fast_dev_run: the run is not checked against max_steps or the validation schedule"]
    problems, notes = [], []
    last = trainer.global_step
    max_steps = trainer.max_steps
    if max_steps is not None and max_steps > 0 and last < max_steps:
        asked, why = _stop_reason(trainer)
        if asked:
            notes.append(f"training stopped at step {last} of max_steps={max_steps}: {why}")
        else:
            problems.append(f"training stopped at step {last} of max_steps={max_steps}: {why}")
    expected = expected_validation_steps(trainer, last)
    if audit is not None and expected is not None:
        done = set(audit.validated_steps)
        # validations before this process started are known from the checkpoint (or, with an older one, not checked)
        started = audit.started_at_step if audit.started_at_step is not None else trainer.global_step
        since = 0 if audit.restored else started
        missing = [s for s in expected if s > since and s not in done]
        if missing:
            shown = ", ".join(map(str, missing[:10])) + (" …" if len(missing) > 10 else "")
            problems.append(
                f"the validations after steps {shown} (trainer.val_check_interval={trainer.val_check_interval}) did "
                "not run, so their val/* metrics are missing; fix: evaluate those steps' checkpoints with "
                "python -m src.eval ckpt_path=<run>/checkpoints/step_<step>.ckpt, or train again"
            )
    elif expected is None:
        notes.append("the validation schedule (time-based or with gradient accumulation) was not checked")
    if problems:
        raise IncompleteRunError("the run ended without doing what it was asked to:\n  - " + "\n  - ".join(problems))
    return notes
