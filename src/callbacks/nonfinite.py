"""Stop (or skip the step) the moment training produces a non-finite loss, gradient or weight.

Without this a diverged run (``model.optimizer.lr=1e6``) trains on NaN, writes checkpoints of NaN weights and ends
with exit status 0 and an mIoU that looks like a bad model rather than a broken run.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from src.callbacks._dist import any_rank
from src.callbacks.errors import NonFiniteTrainingError

log = logging.getLogger(__name__)

_MAX_LISTED = 5


def all_finite(tensors: list[torch.Tensor]) -> torch.Tensor:
    """A 0-dim bool tensor: every element of every tensor is finite. Max-norms, so huge finite values never
    overflow into a false alarm; no host sync (the caller reads it once)."""
    tensors = [t for t in tensors if t.numel()]
    if not tensors:
        return torch.ones((), dtype=torch.bool)
    try:
        norms = torch._foreach_norm(tensors, float("inf"))  # one kernel per device and dtype (clip_grad_norm_'s)
    except (RuntimeError, AttributeError, TypeError):  # pragma: no cover - an older torch or an unusual tensor
        norms = [t.detach().abs().max() for t in tensors]
    device = tensors[0].device
    return torch.isfinite(torch.stack([n.float().to(device) for n in norms])).all()


def _format_number(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def _terms(outputs: Any) -> dict[str, float]:
    """The loss terms that training_step returned (``{"loss": …, "loss_cross_entropy": …, …}``) as floats."""
    if isinstance(outputs, torch.Tensor):
        outputs = {"loss": outputs}
    if not isinstance(outputs, Mapping):
        return {}
    return {k: float(v.detach().float().mean()) for k, v in outputs.items() if isinstance(v, torch.Tensor)}


def describe_terms(terms: Mapping[str, float], limit: int = 8) -> str:
    """``loss=nan, loss_cross_entropy=nan, …``: the main terms first, then the other non-finite ones."""
    if not terms:
        return "(training_step returned no loss terms)"
    main = [k for k in ("loss", "loss_cross_entropy", "loss_mask", "loss_dice") if k in terms]
    rest = [k for k in terms if k not in main and not math.isfinite(terms[k])]
    shown = (main + rest)[:limit]
    text = ", ".join(f"{k}={_format_number(terms[k])}" for k in shown)
    hidden = len(terms) - len(shown)
    bad = sum(not math.isfinite(v) for v in terms.values())
    if hidden:
        text += f" (+{hidden} more terms; {bad} of all {len(terms)} terms are non-finite)"
    return text


def learning_rates(optimizers: Iterable[torch.optim.Optimizer]) -> str:
    """``decay=1e+06, no_decay=1e+06``: each parameter group's current learning rate, by its name."""
    parts = []
    for i, optimizer in enumerate(optimizers):
        for j, group in enumerate(optimizer.param_groups):
            name = group.get("name") or f"group {j}"
            prefix = f"optimizer {i} " if i else ""
            parts.append(f"{prefix}{name}={group['lr']:.4g}")
    return ", ".join(parts) or "(no optimiser)"


def newest_checkpoint(trainer: L.Trainer) -> str:
    """Where the newest checkpoint of this run is, in words, for the error messages."""
    callback = trainer.checkpoint_callback
    path = getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")
    step = getattr(callback, "_last_global_step_saved", None)
    if not path:
        return "no checkpoint has been written yet"
    at = f" (step {step})" if step else ""
    return f"the newest checkpoint is {path}{at}, resume with: ckpt_path={path}"


class NonFiniteGuard(Callback):
    """Checks every optimiser step: the loss and the gradients before the update, the trainable weights after it.

    ``action="stop"`` (default): a non-finite loss or gradient raises :class:`NonFiniteTrainingError` before the
    update is applied and before any checkpoint of that step is written, so the newest checkpoint on disk holds the
    last finite weights. ``action="skip"``: the step's update is dropped instead (every gradient is set to None, so
    AdamW leaves each weight *and* its moments untouched; the learning-rate schedule still advances), the skip is
    counted (``train/nonfinite_skips``) and training goes on; ``max_consecutive_skips`` skips in a row still stop
    the run. Weights that become non-finite *through* an update (finite loss and gradients, e.g. an overflow from a
    huge learning rate) always stop the run: that update cannot be taken back.

    Under DDP the decision is reduced over the ranks, so all of them skip or stop together. Under 16-bit mixed
    precision the gradient scaler's own inf/NaN gradients are its business (it skips those steps and lowers the
    scale); only the loss is checked there.
    """

    def __init__(
        self,
        action: Literal["stop", "skip"] = "stop",
        max_consecutive_skips: int = 10,
        check_weights: bool = True,
    ) -> None:
        if action not in ("stop", "skip"):
            raise ValueError(f"callbacks.nonfinite.action must be 'stop' or 'skip', not {action!r}")
        if max_consecutive_skips < 1:
            raise ValueError(
                f"callbacks.nonfinite.max_consecutive_skips must be at least 1, not {max_consecutive_skips}"
            )
        self.action = action
        self.max_consecutive_skips = max_consecutive_skips
        self.check_weights = check_weights
        self.skipped = 0
        self.consecutive = 0
        self._loss: torch.Tensor | None = None
        self._bad: dict[str, Any] | None = None

    # ------------------------------------------------------------------ the checks
    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        self._loss = loss.detach()

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        flags = [] if self._loss is None else [torch.isfinite(self._loss).all()]
        if grads and getattr(trainer.precision_plugin, "scaler", None) is None:
            flags.append(all_finite(grads))
        bad = bool(flags) and not bool(torch.stack([f.to(flags[0].device) for f in flags]).all())  # one sync
        if not any_rank(trainer, bad):
            self._bad = None
            return
        named = {p: n for n, p in pl_module.named_parameters()}
        bad_grads = [
            named.get(p, "?")
            for g in optimizer.param_groups
            for p in g["params"]
            if p.grad is not None and not torch.isfinite(p.grad).all()
        ]
        self._bad = {
            "step": trainer.global_step + 1,
            "loss": None if self._loss is None else float(self._loss.float().mean()),
            "bad_grads": bad_grads,
            "num_grads": len(grads),
            "lrs": learning_rates(trainer.optimizers),
        }
        for group in optimizer.param_groups:  # drop this step's update: AdamW skips parameters without a gradient
            for p in group["params"]:
                p.grad = None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # runs before any checkpoint callback (Lightning orders those last), so a bad step is never saved
        self._loss = None
        if self._bad is not None:
            bad, self._bad = self._bad, None
            self._on_bad_step(trainer, pl_module, bad, _terms(outputs))
            return
        self.consecutive = 0
        if self.check_weights:
            self._check_weights(trainer, pl_module)

    def _on_bad_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, bad: dict[str, Any], terms: dict[str, float]
    ) -> None:
        what = "loss" if bad["loss"] is not None and not math.isfinite(bad["loss"]) else "gradient"
        grads = ""
        if bad["bad_grads"]:
            listed = ", ".join(bad["bad_grads"][:_MAX_LISTED])
            grads = f"\n  non-finite gradients: {len(bad['bad_grads'])} of {bad['num_grads']} tensors (e.g. {listed})"
        where = f"step {bad['step']} of max_steps={trainer.max_steps}"
        details = f"\n  loss terms: {describe_terms(terms)}{grads}\n  learning rates: {bad['lrs']}"
        if self.action == "skip":
            self.skipped += 1
            self.consecutive += 1
            pl_module.log("train/nonfinite_skips", float(self.skipped), batch_size=1)
            if self.consecutive < self.max_consecutive_skips:
                log.warning(
                    "non-finite %s at %s: its update was skipped (%d in a row, %d in this run; the run stops after "
                    "%d in a row)%s",
                    what,
                    where,
                    self.consecutive,
                    self.skipped,
                    self.max_consecutive_skips,
                    details,
                )
                return
            raise NonFiniteTrainingError(
                f"training diverged: {self.consecutive} steps in a row up to {where} had a non-finite {what} and "
                f"were skipped (callbacks.nonfinite.max_consecutive_skips={self.max_consecutive_skips});{details}\n"
                f"  No update of the skipped steps was applied; {newest_checkpoint(trainer)}\n"
                "  fix: lower the learning rate (model.optimizer.lr) or clip the gradients (trainer.gradient_clip_val="
                "1.0), then resume from that checkpoint or train again"
            )
        raise NonFiniteTrainingError(
            f"training diverged: non-finite {what} at {where};{details}\n"
            f"  This step's update was not applied and nothing of it was saved; {newest_checkpoint(trainer)}\n"
            "  fix: lower the learning rate (model.optimizer.lr) or clip the gradients (trainer.gradient_clip_val=1.0),"
            " then train again or resume from that checkpoint; to skip such steps and go on instead: "
            "callbacks.nonfinite.action=skip"
        )

    def _check_weights(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        params = [p for p in pl_module.parameters() if p.requires_grad]
        bad = not bool(all_finite([p.detach() for p in params]))
        if not any_rank(trainer, bad):
            return
        names = [n for n, p in pl_module.named_parameters() if p.requires_grad and not torch.isfinite(p).all()]
        listed = ", ".join(names[:_MAX_LISTED]) or "(on another rank)"
        raise NonFiniteTrainingError(
            f"training diverged: the optimiser step {trainer.global_step} of max_steps={trainer.max_steps} made "
            f"{len(names)} trainable tensors non-finite (e.g. {listed}) although the loss and the gradients were "
            f"finite: the update itself overflowed.\n  learning rates: {learning_rates(trainer.optimizers)}\n"
            f"  Nothing of this step was saved; {newest_checkpoint(trainer)}\n"
            "  fix: lower the learning rate (model.optimizer.lr) or clip the gradients (trainer.gradient_clip_val=1.0)"
        )

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, int]:
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
        self.consecutive = int(state_dict.get("consecutive", 0))
