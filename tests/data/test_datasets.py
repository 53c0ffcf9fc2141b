"""Dataset classes on generated trees in their real layouts; bad input gives errors that say what to fix."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from src.data.checks import ENTRIES, check_data_root
from src.data.datasets import (
    CONDITIONS,
    DATASETS,
    ACDCDataset,
    BDD100KDataset,
    CityscapesDataset,
    GTA5Dataset,
    MapillaryDataset,
    SyntheticDataset,
)
from src.data.synthetic import DATASET_DIRS, KINDS, write_dataset, write_dg_benchmark
from src.data.transforms import build_test_transform, build_train_transform

N = 3


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    for kind in KINDS:
        write_dataset(kind, root / kind, num_images=N, size=(64, 32))
    return root


def _copy(data_root: Path, kind: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(data_root / kind, tmp_path / kind))


def test_each_dataset_finds_its_pairs(data_root: Path) -> None:
    datasets = {
        "gta5": GTA5Dataset(data_root / "gta5"),
        "cityscapes/train": CityscapesDataset(data_root / "cityscapes", "train"),
        "cityscapes/val": CityscapesDataset(data_root / "cityscapes", "val"),
        "bdd100k": BDD100KDataset(data_root / "bdd100k"),
        "mapillary": MapillaryDataset(data_root / "mapillary"),
        "mapillary_raw": MapillaryDataset(data_root / "mapillary_raw", variant="raw"),
        **{c: ACDCDataset(data_root / "acdc", condition=c) for c in CONDITIONS},
    }
    for key, dataset in datasets.items():
        assert len(dataset) == N, key
        for sample in dataset.samples:
            assert sample.label.is_file() and sample.image.is_file()
            assert sample.name in sample.image.as_posix() and sample.name in sample.label.as_posix()
    city = datasets["cityscapes/val"].samples[0]
    assert city.image.relative_to(data_root).as_posix().startswith("cityscapes/leftImg8bit/val/frankfurt/")
    assert city.label.name.endswith("_gtFine_labelTrainIds.png")
    acdc = datasets["night"].samples[0]
    assert acdc.label.relative_to(data_root / "acdc").parts[:3] == ("gt", "night", "val")
    assert acdc.label.name.endswith("_gt_labelTrainIds.png") and acdc.image.name.endswith("_rgb_anon.png")
    assert datasets["bdd100k"].samples[0].image.suffix == ".jpg"


def test_items_follow_the_contract(data_root: Path) -> None:
    dataset = CityscapesDataset(data_root / "cityscapes", "val", transform=build_test_transform((32, 16)))
    item = dataset[0]
    assert item["image"].shape == (3, 16, 32) and item["image"].dtype == torch.float32
    assert item["label"].shape == (32, 64) and item["label"].dtype == torch.int64
    assert item["name"] == dataset.samples[0].name
    train = CityscapesDataset(data_root / "cityscapes", "train", transform=build_train_transform(crop_size=32, seed=0))
    assert train[0]["image"].shape == (3, 32, 32) and train[0]["label"].shape == (32, 32)
    plain = BDD100KDataset(data_root / "bdd100k")[0]
    assert plain["image"].shape == (3, 32, 64) and plain["image"].abs().max() < 3  # normalised by default


def test_raw_encodings_decode_to_the_same_train_ids(data_root: Path) -> None:
    half = MapillaryDataset(data_root / "mapillary")
    raw = MapillaryDataset(data_root / "mapillary_raw", variant="raw")
    for index in range(N):
        assert set(np.unique(raw.load(index)[1])) <= set(range(19)) | {255}
        np.testing.assert_array_equal(half.load(index)[1], raw.load(index)[1])  # same scenes, same seed
    gta = GTA5Dataset(data_root / "gta5")
    assert gta.samples[0].encoding.name == "Cityscapes label IDs"
    assert Image.open(gta.samples[0].label).mode == "P"  # palette PNG as GTA5 ships them
    assert set(np.unique(gta.load(0)[1])) <= set(range(19)) | {255}


def test_gta_raw_label_id_maps_to_train_id(data_root: Path, tmp_path: Path) -> None:
    root = _copy(data_root, "gta5", tmp_path)
    raw = np.full((32, 64), 26, np.uint8)  # car
    raw[:, :8], raw[:, 8:16], raw[:, 16:24] = 7, 0, 40  # road, unlabeled, not a label ID
    Image.fromarray(raw, mode="L").convert("P").save(root / "labels" / "00000.png")
    label = GTA5Dataset(root).load(0)[1]
    assert (label[:, 24:] == 13).all() and (label[:, :8] == 0).all() and (label[:, 8:24] == 255).all()
    converted = np.full((32, 64), 5, np.uint8)
    Image.fromarray(converted).save(root / "labels" / "00000_labelTrainIds.png")
    dataset = GTA5Dataset(root)
    assert dataset.samples[0].label.name == "00000_labelTrainIds.png"
    assert (dataset.load(0)[1] == 5).all()


def test_cityscapes_falls_back_to_label_ids(data_root: Path, tmp_path: Path) -> None:
    root = _copy(data_root, "cityscapes", tmp_path)
    expected = [CityscapesDataset(root, "val").load(i)[1] for i in range(N)]
    for path in (root / "gtFine" / "val").rglob("*_labelTrainIds.png"):
        path.unlink()
    dataset = CityscapesDataset(root, "val")
    assert all(s.label.name.endswith("_gtFine_labelIds.png") for s in dataset.samples)
    for index in range(N):
        np.testing.assert_array_equal(dataset.load(index)[1], expected[index])


def test_unknown_train_id_values_become_ignore(data_root: Path, tmp_path: Path) -> None:
    root = _copy(data_root, "bdd100k", tmp_path)
    dataset = BDD100KDataset(root)
    label = np.array(Image.open(dataset.samples[0].label))
    label[0, :4] = (19, 77, 254, 255)
    Image.fromarray(label).save(dataset.samples[0].label)
    assert dataset.load(0)[1][0, :4].tolist() == [255, 255, 255, 255]


def test_missing_root_names_expected_layout(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"leftImg8bit/val/\*\*/\*_leftImg8bit\.png.*gtFine/val/"):
        CityscapesDataset(tmp_path / "nowhere", "val")
    with pytest.raises(FileNotFoundError, match=r"rgb_anon/fog/val.*gt/fog/val/\*\*/\*_gt_labelTrainIds\.png"):
        ACDCDataset(tmp_path, condition="fog")
    with pytest.raises(FileNotFoundError, match=r"half/val_img"):
        MapillaryDataset(tmp_path)
    with pytest.raises(ValueError, match="condition"):
        ACDCDataset(tmp_path, condition="sandstorm")


def test_images_without_labels_lists_examples_and_count(tmp_path: Path) -> None:
    root = write_dataset("gta5", tmp_path / "gta", num_images=7, size=(16, 8))
    shutil.rmtree(root / "labels")
    with pytest.raises(FileNotFoundError) as error:
        GTA5Dataset(root)
    message = str(error.value)
    assert "7 of 7 images" in message and "labels/**/*.png" in message
    assert sum(f"images/{i:05d}.png" in message for i in range(7)) == 5


def test_corrupt_files_are_named(data_root: Path, tmp_path: Path) -> None:
    root = _copy(data_root, "cityscapes", tmp_path)
    dataset = CityscapesDataset(root, "val")
    dataset.samples[0].image.write_bytes(b"not a png")
    with pytest.raises(OSError, match=dataset.samples[0].image.name):
        dataset[0]
    dataset.samples[1].label.write_bytes(b"\x89PNG broken")
    with pytest.raises(OSError, match=dataset.samples[1].label.name):
        dataset[1]


def test_generation_is_deterministic(tmp_path: Path) -> None:
    a = write_dataset("acdc", tmp_path / "a", num_images=2, size=(32, 16), seed=1)
    b = write_dataset("acdc", tmp_path / "b", num_images=2, size=(32, 16), seed=1)
    c = write_dataset("acdc", tmp_path / "c", num_images=2, size=(32, 16), seed=2)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert (
        files == sorted(p.relative_to(b) for p in b.rglob("*.png")) and len(files) == 24
    )  # 4 conditions x 2 x (image, 2 labels)
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files)


def test_dg_benchmark_tree(tmp_path: Path) -> None:
    root = write_dg_benchmark(tmp_path, num_images=2, size=(32, 16))
    assert len(CityscapesDataset(root / DATASET_DIRS["cityscapes"], "train")) == 2
    assert all(len(ACDCDataset(root / DATASET_DIRS["acdc"], condition=c)) == 2 for c in CONDITIONS)


def test_registered_classes_are_the_one_home_of_their_facts(tmp_path: Path) -> None:
    assert [e.dataset for e in ENTRIES] == [cls.key for cls in DATASETS.values() for _ in cls.official_splits]
    assert KINDS == tuple(kind for cls in DATASETS.values() for kind in cls.synthetic_kinds())
    assert all(DATASET_DIRS[kind] == cls.default_dir for cls in DATASETS.values() for kind in cls.synthetic_kinds())
    root = write_dg_benchmark(tmp_path, num_images=2, size=(32, 16), kinds=KINDS)  # every kind, usual folders
    results = check_data_root(root, tuple(DATASETS), full=True)
    assert len(results) == len(ENTRIES) and all(not r.errors and r.found == 2 for r in results), [
        r.format() for r in results
    ]


def test_synthetic_dataset_in_memory() -> None:
    dataset = SyntheticDataset(num_images=3, size=(48, 32), seed=4, domain="night")
    image, label = dataset.load(1)
    assert image.shape == (32, 48, 3) and label.shape == (32, 48) and len(dataset) == 3
    np.testing.assert_array_equal(image, SyntheticDataset(size=(48, 32), seed=4, domain="night").load(1)[0])
    assert not np.array_equal(image, SyntheticDataset(size=(48, 32), seed=4, domain="fog").load(1)[0])
    assert dataset[0]["name"] == "night/00000"
    with pytest.raises(ValueError, match="domain"):
        SyntheticDataset(domain="mars")
