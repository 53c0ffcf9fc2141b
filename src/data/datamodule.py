"""DGDataModule: one source domain for training, named target domains for validation and test."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from src.data.sampler import ResumableSampler, SeededDataset


class DGDataModule(L.LightningDataModule):
    """Domain-generalisation data: ``source`` trains, each of ``targets`` gets its own val/test dataloader.

    ``source`` and the values of ``targets`` are dataset factories (Hydra ``_partial_: true``) so that building
    the config touches no files; they are called in ``setup``. One dataloader per target makes the metrics
    per-domain by construction (the domain comes from the dataset, SPEC D7). ``prepare`` is an optional callable
    run once in ``prepare_data`` (e.g. the generator that writes the smoke/MiniDG data).
    ``mean_domains`` names the targets averaged into ``mean_mIoU`` (SPEC §8.2; all targets when None).
    A target set to None (``data.targets.map=null``) is dropped.
    """

    def __init__(
        self,
        source: Callable[[], Dataset],
        targets: Mapping[str, Callable[[], Dataset]],
        batch_size: int = 5,
        val_batch_size: int = 1,
        num_workers: int = 4,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        seed: int = 0,
        mean_domains: list[str] | None = None,
        prepare: Callable[[], Any] | None = None,
    ) -> None:
        super().__init__()
        targets = {name: factory for name, factory in (targets or {}).items() if factory is not None}
        if not targets:
            raise ValueError("DGDataModule needs at least one target domain")
        self.source_factory = source
        self.target_factories = targets
        self.target_names = list(self.target_factories)
        unknown = sorted(set(mean_domains or []) - set(self.target_names))
        if unknown:
            raise ValueError(f"mean_domains {unknown} are not targets; targets are {self.target_names}")
        self.mean_domains = list(mean_domains) if mean_domains else list(self.target_names)
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.seed = seed
        self.prepare = prepare
        self.source: Dataset | None = None
        self.targets: dict[str, Dataset] = {}
        self._resume: dict[str, int] | None = None

    def prepare_data(self) -> None:
        if self.prepare is not None:
            self.prepare()

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.source is None:
            self.source = self.source_factory()
        if not self.targets:
            self.targets = {name: factory() for name, factory in self.target_factories.items()}

    def _loader(self, dataset: Dataset, batch_size: int, sampler=None, drop_last: bool = False) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            drop_last=drop_last,
            # its own generator, so worker seeds never draw from (and shift) the global RNG stream
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        sampler = ResumableSampler(len(self.source), seed=self.seed)
        if self._resume is not None:
            done = self._resume["batches"]
            if done < len(sampler) // self.batch_size:  # saved mid-epoch; at an epoch end nothing is skipped
                sampler.set_epoch(self._resume["epoch"])
                sampler.skip(done * self.batch_size)
            self._resume = None
        return self._loader(SeededDataset(self.source), self.batch_size, sampler=sampler, drop_last=True)

    def val_dataloader(self) -> list[DataLoader]:
        return [self._loader(self.targets[n], self.val_batch_size) for n in self.target_names]

    def test_dataloader(self) -> list[DataLoader]:
        return self.val_dataloader()

    def state_dict(self) -> dict[str, int]:
        """Where in the epoch training stands, so that a resumed run skips the batches already seen."""
        if self.trainer is None:
            return {}
        loop = self.trainer.fit_loop
        return {"epoch": self.trainer.current_epoch, "batches": loop.epoch_loop.batch_progress.current.processed}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self._resume = dict(state_dict) if state_dict else None
