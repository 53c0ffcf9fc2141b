"""DGDataModule: one source domain for training, named target domains for validation and test."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from src.callbacks._dist import gather_objects
from src.callbacks.errors import DataError
from src.data.sampler import ResumableSampler, SeededDataset


def _describe(dataset: Dataset | None) -> str:
    """``CityscapesDataset at data/cityscapes`` (or the class name) for messages."""
    root = getattr(dataset, "root", None)
    return f"{type(dataset).__name__} at {root}" if root is not None else type(dataset).__name__


class DGDataModule(L.LightningDataModule):
    """Domain-generalisation data: ``source`` trains, each of ``targets`` gets its own val/test dataloader.

    ``source`` and the values of ``targets`` are dataset factories (Hydra ``_partial_: true``) so that building
    the config touches no files; they are called in ``setup``. One dataloader per target makes the metrics
    per-domain by construction (the domain comes from the dataset, method D7). ``prepare`` is an optional callable
    run once in ``prepare_data`` (e.g. the generator that writes the smoke/MiniDG data).
    ``mean_domains`` names the targets averaged into ``mean_mIoU`` (docs/method.md §8.2; all targets when None).
    A target set to None (``data.targets.map=null``) is dropped. ``cache_decoded`` makes the datasets that read files
    keep them decoded in memory (``src.data.datasets.base.DecodeCache``: exactly the pixels of decoding them again),
    for datasets that fit in memory (MiniDG); each DataLoader worker process holds its own copy.
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
        cache_decoded: bool = False,
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
        self.cache_decoded = cache_decoded
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
        for dataset in (self.source, *self.targets.values()):
            if hasattr(dataset, "cache_decoded"):  # datasets that read files (generated ones have nothing to cache)
                dataset.cache_decoded = self.cache_decoded

    def _loader(
        self, dataset: Dataset, batch_size: int, sampler=None, drop_last: bool = False, persistent: bool = False
    ) -> DataLoader:
        """``persistent``: keep the workers between epochs (training only: one evaluation loader per target domain,
        kept alive, would hold targets × workers processes — 76 domains for Cityscapes-C)."""
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and persistent,
            drop_last=drop_last,
            # its own generator, so worker seeds never draw from (and shift) the global RNG stream
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        sampler = ResumableSampler(len(self.source), seed=self.seed)
        batches = len(sampler) // self.batch_size
        if batches == 0:
            raise DataError(
                f"the training split has {len(self.source)} images ({_describe(self.source)}): with "
                f"data.batch_size={self.batch_size} on {sampler.world_size} process(es) there is no full batch "
                f"({len(sampler)} images per process; incomplete batches are dropped), so nothing would be trained.\n"
                "  fix: lower data.batch_size or add training images"
            )
        if self._resume is not None:
            skip = self._resume_skip(sampler)
            if skip:
                sampler.set_epoch(self._resume["epoch"])
                sampler.skip(skip)
            self._resume = None
        return self._loader(
            SeededDataset(self.source), self.batch_size, sampler=sampler, drop_last=True, persistent=True
        )

    def _resume_skip(self, sampler: ResumableSampler) -> int:
        """How many of its samples this rank skips to continue the interrupted epoch (0 at an epoch's end).

        Each rank restores its own saved position. Resumed by another number of processes, the first
        ``batches x batch_size x old world size`` samples of the epoch's order are what all ranks had consumed; each
        rank of the new split skips its share of them (the same samples are not seen twice, but batches differ).
        """
        state = self._resume or {}
        if "ranks" not in state:  # a checkpoint from before per-rank positions: every rank had done `batches`
            skip = int(state.get("batches", 0)) * self.batch_size
            return skip if skip < len(sampler) - len(sampler) % self.batch_size else 0
        ranks = state["ranks"]
        if "size" in ranks[0] and ranks[0]["size"] != sampler.size:
            warnings.warn(
                f"the training split has {sampler.size} images but had {ranks[0]['size']} when the checkpoint was "
                "written: the interrupted epoch cannot be continued where it stopped; it is started over",
                stacklevel=2,
            )
            return 0
        saved_world = int(ranks[0].get("world_size", len(ranks)))
        if saved_world == sampler.world_size and len(ranks) == saved_world:
            mine = ranks[sampler.rank]
            done, batch_size = int(mine["batches"]), int(mine.get("batch_size", self.batch_size))
            skip = done * batch_size
        else:
            mine = ranks[0]
            done, batch_size = int(mine["batches"]), int(mine.get("batch_size", self.batch_size))
            skip = done * batch_size * saved_world // sampler.world_size
            if sampler.rank == 0:
                warnings.warn(
                    f"this checkpoint was written by {saved_world} process(es) and is resumed by "
                    f"{sampler.world_size}: the interrupted epoch goes on with the samples not yet seen, but in other "
                    "batches than an uninterrupted run's",
                    stacklevel=2,
                )
        if skip >= len(sampler) - len(sampler) % self.batch_size:  # saved at an epoch's end: nothing to skip
            return 0
        return skip

    def val_dataloader(self) -> list[DataLoader]:
        return [self._loader(self.targets[n], self.val_batch_size) for n in self.target_names]

    def test_dataloader(self) -> list[DataLoader]:
        return self.val_dataloader()

    def state_dict(self) -> dict[str, Any]:
        """Where in the epoch each rank stands, so that a resumed run skips the batches already seen.

        ``ranks`` holds every rank's own position (gathered: Lightning writes rank 0's copy of this dict); each
        rank restores its own. ``epoch``/``batches`` repeat rank 0's, as checkpoints before per-rank positions had.
        """
        if self.trainer is None:
            return {}
        loop = self.trainer.fit_loop
        mine = {
            "epoch": self.trainer.current_epoch,
            "batches": loop.epoch_loop.batch_progress.current.processed,
            "batch_size": self.batch_size,
            "size": len(self.source) if self.source is not None else -1,
            "rank": self.trainer.global_rank,
            "world_size": self.trainer.world_size,
        }
        ranks = gather_objects(mine)
        return {"epoch": mine["epoch"], "batches": ranks[0]["batches"], "ranks": ranks}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume = dict(state_dict) if state_dict else None
