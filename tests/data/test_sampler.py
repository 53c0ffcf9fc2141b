from src.data.sampler import ResumableSampler, sample_seed


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


def test_augmentation_is_the_same_with_any_number_of_workers():
    import torch
    from torch.utils.data import DataLoader

    from src.data.datasets import SyntheticDataset
    from src.data.sampler import SeededDataset
    from src.data.transforms import build_train_transform

    def first_batch(workers: int) -> torch.Tensor:
        dataset = SyntheticDataset(num_images=8, size=(96, 48), seed=0, transform=build_train_transform(crop_size=32))
        loader = DataLoader(
            SeededDataset(dataset),
            batch_size=4,
            sampler=ResumableSampler(8, seed=2),
            num_workers=workers,
            generator=torch.Generator().manual_seed(0),
        )
        return next(iter(loader))["image"]

    assert torch.equal(first_batch(0), first_batch(2))
