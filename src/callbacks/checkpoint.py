"""Step checkpoints that are all written, each after its step's validation, and that resume into that validation.

Lightning's ``ModelCheckpoint(every_n_train_steps=n)`` has two faults for step-based runs like ours:

- a checkpoint step on an epoch's last batch is deferred to "the validation after it", which with
  ``check_val_every_n_epoch=null`` usually never comes at that step: the checkpoint is silently not written;
- a mid-epoch checkpoint is written *before* that step's validation, and a run resumed from it fast-forwards past the
  validation, so a run killed during a validation never produces that validation's metrics.

:class:`StepCheckpoint` writes every ``every_n_train_steps`` checkpoint, after the step's validation when one is due
at that step (so a kill during the validation resumes from the previous checkpoint and repeats the step and its
validation), and makes ``last.ckpt`` hold the final weights when training ends between checkpoint steps.
:func:`mark_validation_pending` is what lets :class:`~src.callbacks.preemption.Preemption` save *before* a due
validation and still have the resumed run run it.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


def validation_due(trainer: L.Trainer) -> bool:
    """Whether Lightning validates right after the training batch that is ending (call from on_train_batch_end).

    The same test the training loop makes next (``_should_check_val_fx``), plus: there is something to validate.
    """
    loop = trainer.fit_loop.epoch_loop
    fetcher = trainer.fit_loop._data_fetcher
    if fetcher is None or not loop._should_check_val_fx(fetcher):
        return False
    batches = trainer.num_val_batches
    total = sum(batches) if isinstance(batches, list) else batches
    return bool(total)


def _flush_loggers(trainer: L.Trainer) -> None:
    for logger in trainer.loggers:
        logger.save()


def _set(progress: dict[str, Any], ready: int, started: int, processed: int, completed: int) -> None:
    progress.update(ready=ready, started=started, processed=processed, completed=completed)


def mark_validation_pending(checkpoint: dict[str, Any], in_validation: bool) -> None:
    """Rewrite the loop state of a checkpoint taken after a training step whose validation has not run (or ran only
    partly) so that a run resumed from it runs that whole validation before the next training step.

    The state written is the one Lightning itself records when a validation step raises (what its
    ``OnExceptionCheckpoint`` saves): the training batch completed, the validation started at its first batch and
    nothing of it processed. On resume Lightning then restarts "mid-evaluation": it re-runs the validation from its
    first batch (metrics are not in checkpoints, so nothing is double-counted) and goes on training after it.
    ``in_validation``: the checkpoint is taken during the validation (otherwise at the training batch's end).
    """
    fit = checkpoint["loops"]["fit_loop"]
    batches = fit["epoch_loop.batch_progress"]
    if not in_validation:  # saved in on_train_batch_end: the batch is processed but not yet counted as completed
        for key in ("total", "current"):
            batches[key]["completed"] = batches[key]["processed"]
    val = fit["epoch_loop.val_loop.batch_progress"]
    base = val["total"]["completed"] - (val["current"]["completed"] if in_validation else 0)
    _set(val["total"], base + 1, base + 1, base, base)
    _set(val["current"], 1, 1, 0, 0)
    val["is_last_batch"] = False
    checkpoint["validation_pending"] = int(checkpoint.get("global_step", 0))


class StepCheckpoint(ModelCheckpoint):
    """:class:`~lightning.pytorch.callbacks.ModelCheckpoint` for step-based runs (takes the same arguments).

    With ``every_n_train_steps=n`` (and no ``train_time_interval``) every n-th step is checkpointed: at the end of
    the training batch, or, when a validation is due at that step, at the end of that validation (then the checkpoint
    also carries the step's metrics, and a kill during the validation resumes from the previous checkpoint, repeating
    the step and its validation). ``last.ckpt`` (``save_last``) is rewritten with every checkpoint and once more at
    the end of training when the final step is not a checkpoint step. Any other trigger behaves as ModelCheckpoint.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deferred_step: int | None = None
        self._flush_next = False

    @property
    def state_key(self) -> str:
        """ModelCheckpoint's key, so that checkpoints written with it (or with this class) restore its state."""
        return super().state_key.replace(type(self).__qualname__, "ModelCheckpoint", 1)

    @property
    def _step_mode(self) -> bool:
        return self._every_n_train_steps >= 1 and self._train_time_interval is None

    def _due(self, trainer: L.Trainer) -> bool:
        return self._step_mode and trainer.global_step % self._every_n_train_steps == 0

    def write_step_checkpoint(self, trainer: L.Trainer) -> None:
        """Write this step's checkpoint (top-k by the monitor) and ``last.ckpt``."""
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)

    def write_last(self, trainer: L.Trainer) -> str:
        """Write the current state to ``last.ckpt`` (atomically, through the trainer's checkpoint IO); its path."""
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        return self.last_model_path

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        # the metrics logged so far go to disk with every checkpoint (CSVLogger buffers 100 steps): after a kill -9,
        # the interrupted run's logs hold everything up to its newest checkpoint and the resumed run adds the rest
        _flush_loggers(trainer)
        self._flush_next = True  # a checkpoint at a training batch's end precedes that step's own log row

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._step_mode:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            return
        if not self._due(trainer) or self._should_skip_saving_checkpoint(trainer):
            return
        if validation_due(trainer):
            self._deferred_step = trainer.global_step  # written by on_validation_end, after this step's metrics
            return
        self.write_step_checkpoint(trainer)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._flush_next:
            self._flush_next = False
            _flush_loggers(trainer)
        if self._deferred_step is not None:  # never expected: the validation predicted for that step did not run
            step, self._deferred_step = self._deferred_step, None
            raise RuntimeError(
                f"internal error: the checkpoint of step {step} waited for a validation at that step that did not "
                "run; please report this with your trainer config"
            )

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._step_mode:
            super().on_validation_end(trainer, pl_module)
            return
        self._deferred_step = None
        if self._due(trainer) and not self._should_skip_saving_checkpoint(trainer):
            self.write_step_checkpoint(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))  # the final weights
