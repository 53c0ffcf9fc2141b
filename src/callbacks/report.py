"""The end of a training run tells its story: the per-domain, per-class table of its last validation.

:class:`RunReport` takes the results the module computed in its last validation (``SegmentationModule.last_results``,
set in ``on_validation_epoch_end`` outside the sanity check) and, when ``fit`` ends, prints them as a plain-text
table and writes ``val_results.csv`` / ``val_results.md`` into the run directory, with src.eval's columns
(:mod:`src.reporting`, the tables' one home). After each validation it logs one plain line per validation (the step,
each domain's mIoU and the mean), which a step-based run on a cluster leaves in its log file. A run that also tests
(``test=true``) gets ``test_results.csv`` / ``.md`` from the test. The files are named by the stage their numbers
come from; ``results.csv`` stays the mark of an src.eval output (``scripts/results_table.py``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn

from src.reporting import format_table, report, results_table, write_tables

log = logging.getLogger(__name__)


class RunReport(Callback):
    """Per-domain and per-class results at the end of a run, on the console and in ``dirpath``.

    - after every validation of ``fit`` (not the sanity check): one log line, ``validation at step N: snow 61.20 |
      night 40.11 | … | mean(snow,night,fog,rain) 55.02``;
    - at the end of ``fit``: the last validation's full table printed and written to ``<dirpath>/<val_stem>.csv``
      and ``.md`` (kept in checkpoints, so a run resumed after its last validation still reports it);
    - at the end of a ``test`` in the same process: the same for the test, ``<dirpath>/<test_stem>.*``.

    Only the global-zero process writes and prints (the metrics are already reduced over the ranks).
    """

    def __init__(
        self, dirpath: str | Path | None = None, val_stem: str = "val_results", test_stem: str = "test_results"
    ) -> None:
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.val_stem, self.test_stem = val_stem, test_stem
        self.rows: list[dict[str, str]] = []
        self.step: int | None = None

    def _dir(self, trainer: L.Trainer) -> Path:
        return self.dirpath if self.dirpath is not None else Path(trainer.default_root_dir)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        results = getattr(pl_module, "last_results", None)
        if not results:
            return
        self.rows = results_table(results, list(getattr(pl_module, "mean_domains", [])) or list(results))
        self.step = trainer.global_step
        if trainer.is_global_zero:
            cells = " | ".join(f"{r['domain']} {r['mIoU']}" for r in self.rows)
            log.info("validation at step %d: %s", self.step, cells)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        if not self.rows:
            log.info("no validation ran in this run: no results table (validate with python -m src.eval)")
            return
        title = f"validation at step {self.step} (last validation of the run), IoU per class (%)"
        csv_path, md_path = write_tables(self.rows, self._dir(trainer), self.val_stem, title)
        print(f"{format_table(self.rows, title)}\nwritten to {csv_path} and {md_path}", flush=True)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        results = getattr(pl_module, "test_results", None)
        if not trainer.is_global_zero or not results or trainer.state.fn != TrainerFn.TESTING:
            return
        title = f"test of the weights at step {trainer.global_step}, IoU per class (%)"
        mean_domains = list(getattr(pl_module, "mean_domains", [])) or list(results)
        report(results, mean_domains, self._dir(trainer), self.test_stem, title)

    def state_dict(self) -> dict[str, Any]:
        return {"rows": [dict(r) for r in self.rows], "step": self.step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = [dict(r) for r in state_dict.get("rows", [])]
        self.step = state_dict.get("step")
