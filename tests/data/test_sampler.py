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
