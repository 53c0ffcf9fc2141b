"""A seeded, DDP-aware training sampler that can resume mid-epoch, and per-sample seeded augmentation."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import albumentations as A
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler

from src.data.transforms import reseed


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed for one draw of one sample; distinct across (seed, epoch, index)."""
    return ((seed * 1_000_003 + epoch) * 2_147_483_629 + index) & 0xFFFFFFFF


class ResumableSampler(Sampler[tuple[int, int]]):
    """Shuffles ``size`` indices with a generator seeded by (seed, epoch) and splits them across ranks.

    Yields ``(index, augmentation_seed)`` pairs for :class:`SeededDataset`, so that a sample's augmentation is a
    function of (seed, epoch, index) alone: the same with any number of workers, and the same after a resume.

    ``skip(n)`` drops the first ``n`` indices of the next iteration only, so that a run restored mid-epoch
    sees exactly the samples it had not seen yet. ``__len__`` keeps reporting the full epoch so Lightning's
    batch counters (restored from the checkpoint) and the loader agree on where the epoch ends.
    Lightning's ``use_distributed_sampler`` must be off: this sampler does the rank split itself.
    """

    def __init__(self, size: int, seed: int = 0, rank: int | None = None, world_size: int | None = None) -> None:
        if size <= 0:
            raise ValueError("the training dataset is empty")
        initialised = dist.is_available() and dist.is_initialized()
        self.rank = rank if rank is not None else (dist.get_rank() if initialised else 0)
        self.world_size = world_size if world_size is not None else (dist.get_world_size() if initialised else 1)
        self.size, self.seed = size, seed
        self.epoch = 0
        self._skip = 0
        self.num_samples = -(-size // self.world_size)  # ceil: ranks pad by wrapping around

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip(self, n: int) -> None:
        self._skip = n

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=g)
        total = self.num_samples * self.world_size
        order = torch.cat([order, order[: total - self.size]]) if total > self.size else order
        mine = order[self.rank : total : self.world_size].tolist()
        skip, self._skip = self._skip, 0
        return iter([(i, sample_seed(self.seed, self.epoch, i)) for i in mine[skip:]])


class SeededDataset(Dataset):
    """Reseeds the wrapped dataset's albumentations pipeline from the key that :class:`ResumableSampler` yields.

    This is the only seeding of the training augmentation: the pipeline is reseeded before every sample, in
    whichever worker process loads it, so a draw depends on (seed, epoch, index) and not on ``num_workers`` or on
    which worker got the sample. Evaluation pipelines draw nothing, so they need no seeding.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        transform = getattr(self.dataset, "transform", None)
        if isinstance(transform, A.BaseCompose):
            reseed(transform, seed)
        return self.dataset[index]
