"""ResumableSampler epochs, ranks and resume; SeededDataset makes augmentation a function of (seed, epoch, index)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from src.data.datasets import SyntheticDataset
from src.data.sampler import ResumableSampler, SeededDataset, sample_seed
from src.data.transforms import build_train_transform, reseed


def indices(sampler):
    return [i for i, _ in sampler]


def test_epochs_are_seeded_permutations():
    s = ResumableSampler(10, seed=3)
    s.set_epoch(0)
    a = indices(s)
    s.set_epoch(1)
    b = indices(s)
    assert sorted(a) == list(range(10)) and sorted(b) == list(range(10)) and a != b
    assert indices(ResumableSampler(10, seed=3)) == a


def test_skip_resumes_mid_epoch_once():
    s = ResumableSampler(12, seed=1)
    s.set_epoch(2)
    full = indices(s)
    s.skip(5)
    assert indices(s) == full[5:]
    assert indices(s) == full  # the skip applies to one iteration only
    assert len(s) == 12


def test_ranks_partition_the_epoch():
    parts = [indices(ResumableSampler(10, seed=0, rank=r, world_size=3)) for r in range(3)]
    assert all(len(p) == 4 for p in parts)
    assert set().union(*parts) == set(range(10))


def test_augmentation_seeds_depend_on_seed_epoch_and_index_only():
    s = ResumableSampler(6, seed=5)
    s.set_epoch(1)
    keys = list(s)
    assert all(seed == sample_seed(5, 1, i) for i, seed in keys)
    assert len({seed for _, seed in keys}) == 6
    assert sample_seed(5, 2, 0) != sample_seed(5, 1, 0) != sample_seed(6, 1, 0)


class _SameImage(SyntheticDataset):
    """Every index loads the same scene, so differences between items come from the augmentation alone."""

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return super().load(0)


def _augmented(workers: int, epoch: int = 0, seed: int = 2) -> dict[int, torch.Tensor]:
    """Index -> augmented image of one epoch, loaded the way DGDataModule trains (ResumableSampler + SeededDataset).

    The pipeline gets no seed of its own (a random one), so nothing but the per-sample seeds can make runs agree.
    """
    dataset = _SameImage(num_images=8, size=(96, 48), seed=0, transform=build_train_transform(crop_size=32))
    sampler = ResumableSampler(8, seed=seed)
    sampler.set_epoch(epoch)
    keys = list(sampler)
    loader = DataLoader(SeededDataset(dataset), batch_size=4, sampler=sampler, num_workers=workers)
    images = torch.cat([batch["image"] for batch in loader])
    return {index: image for (index, _), image in zip(keys, images, strict=True)}


def test_augmentation_depends_on_seed_epoch_and_index_only():
    serial, parallel = _augmented(workers=0), _augmented(workers=2)
    assert serial.keys() == parallel.keys() == set(range(8))
    assert all(torch.equal(serial[i], parallel[i]) for i in range(8))  # any number of workers, any worker
    assert len({serial[i].sum().item() for i in range(8)}) > 1  # the same scene, augmented per index
    next_epoch = _augmented(workers=2, epoch=1)
    assert not all(torch.equal(serial[i], next_epoch[i]) for i in range(8))

    transform = build_train_transform(crop_size=32)  # the same draw, made directly from (seed, epoch, index)
    image, label = _SameImage(size=(96, 48), seed=0).load(0)
    for index in (0, 5):
        reseed(transform, sample_seed(2, 1, index))
        assert torch.equal(transform(image=image, mask=label)["image"], next_epoch[index])
