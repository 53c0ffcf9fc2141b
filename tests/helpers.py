"""Test-only pieces that configs can name by ``_target_``."""

from lightning.pytorch import Callback


class CrashAt(Callback):
    """Raises before training step ``step`` starts, like a job killed mid-run (after its last checkpoint)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")
