"""How a MiniDG run uses the CPU: a fixed number of torch threads, whatever launched it.

A float result depends on the number of intra-op threads (a matrix product split over two threads adds in another
order than on one), so a run on 2 threads and the same run on 1 thread end at different mIoU. `TorchThreads` makes the
number part of the run's config (`experiment=minidg` sets 1, as the sweep runs it), so that `python -m src.train
experiment=minidg` and `scripts/minidg_sweep.py` give the same numbers for a seed (docs/minidg.md, "Threads").
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


class TorchThreads(Callback):
    """Run the trainer's stages (fit, validate, test) on ``num_threads`` intra-op CPU threads
    (``torch.set_num_threads``) and restore the previous number when each stage ends.

    Set when a stage's ``setup`` runs, before its first forward pass; building the model before that draws its random
    initial weights, which no thread count changes.
    """

    def __init__(self, num_threads: int = 1) -> None:
        if not isinstance(num_threads, int) or isinstance(num_threads, bool) or num_threads < 1:
            raise ValueError(
                f"TorchThreads needs num_threads >= 1, got {num_threads!r}\n"
                "  fix: callbacks.torch_threads.num_threads=1 (or remove the callback to keep torch's default)"
            )
        self.num_threads = num_threads
        self._previous: int | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._previous = torch.get_num_threads()
        torch.set_num_threads(self.num_threads)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._previous is not None:
            torch.set_num_threads(self._previous)
            self._previous = None
