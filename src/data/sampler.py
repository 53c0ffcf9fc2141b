"""A seeded, DDP-aware training sampler that can resume in the middle of an epoch."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    """Shuffles ``size`` indices with a generator seeded by (seed, epoch) and splits them across ranks.

    ``skip(n)`` drops the first ``n`` indices of the next iteration only, so that a run restored mid-epoch
    sees exactly the samples it had not seen yet. ``__len__`` keeps reporting the full epoch so Lightning's
    batch counters (restored from the checkpoint) and the loader agree on where the epoch ends.
    Lightning's ``use_distributed_sampler`` must be off: this sampler does the rank split itself.
    """

    def __init__(self, size: int, seed: int = 0, shuffle: bool = True, rank: int | None = None,
                 world_size: int | None = None) -> None:
        if size <= 0:
            raise ValueError("the training dataset is empty")
        initialised = dist.is_available() and dist.is_initialized()
        self.rank = rank if rank is not None else (dist.get_rank() if initialised else 0)
        self.world_size = world_size if world_size is not None else (dist.get_world_size() if initialised else 1)
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.epoch = 0
        self._skip = 0
        self.num_samples = -(-size // self.world_size)  # ceil: ranks pad by wrapping around

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip(self, n: int) -> None:
        self._skip = n

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=g)
        else:
            order = torch.arange(self.size)
        total = self.num_samples * self.world_size
        order = torch.cat([order, order[: total - self.size]]) if total > self.size else order
        mine = order[self.rank : total : self.world_size].tolist()
        skip, self._skip = self._skip, 0
        return iter(mine[skip:])
