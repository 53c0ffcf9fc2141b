"""The data scripts end to end, run as a user would (subprocess with this interpreter)."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from src.data.checks import check_data_root
from src.data.datasets import CityscapesDataset, GTA5Dataset, MapillaryDataset
from src.data.labels import LABEL_IDS, MAPILLARY_V12
from src.data.synthetic import write_dataset, write_dg_benchmark

REPO = Path(__file__).resolve().parents[2]
ALL = ("gta5", "cityscapes", "bdd100k", "mapillary", "acdc")


def _run(script: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(REPO / "scripts" / script), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120)


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    return write_dg_benchmark(tmp_path / "data", num_images=2, size=(32, 16), kinds=ALL)


def test_checker_passes_a_good_tree_and_fails_a_broken_one(data_root: Path) -> None:
    good = _run("check_data_layout.py", data_root)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "cityscapes/val: 2 pairs (expected 500)" in good.stdout

    train_ids = next((data_root / "acdc" / "gt" / "night" / "val").rglob("*_gt_labelTrainIds.png"))
    train_ids.unlink()
    train_ids.with_name(train_ids.name.replace("labelTrainIds", "labelIds")).unlink()
    broken = _run("check_data_layout.py", data_root, "--datasets", "acdc", "cityscapes")
    assert broken.returncode == 1
    assert "[  FAIL] acdc/night/val" in broken.stdout and "1 of 2 images" in broken.stdout
    assert "gta5" not in broken.stdout


def test_checker_reports_missing_datasets_and_unknown_values(data_root: Path, tmp_path: Path) -> None:
    missing = check_data_root(tmp_path / "empty", ("bdd100k",))
    assert not missing[0].ok and "images/10k/val/**/*.jpg" in missing[0].errors[0]

    label_path = CityscapesDataset(data_root / "cityscapes", "val").samples[1].label
    label = np.array(Image.open(label_path))
    label[0, 0] = 50
    Image.fromarray(label).save(label_path)
    result = check_data_root(data_root, ("cityscapes",), full=True)[1]
    assert not result.ok and "outside the mapping" in result.errors[0] and "[50]" in result.errors[0]
    assert label_path.name in result.errors[0]


def test_prepare_gta5(tmp_path: Path) -> None:
    root = write_dataset("gta5", tmp_path / "gta", num_images=3, size=(32, 16))
    done = _run("prepare_gta5.py", root, "--workers", "2")
    assert done.returncode == 0, done.stderr
    for raw in sorted((root / "labels").glob("?????.png")):
        converted = np.array(Image.open(raw.with_name(f"{raw.stem}_labelTrainIds.png")))
        np.testing.assert_array_equal(converted, LABEL_IDS.to_train_ids(np.array(Image.open(raw))))
    assert all(s.label.name.endswith("_labelTrainIds.png") for s in GTA5Dataset(root).samples)


def test_prepare_mapillary_halves_as_the_authors_script(tmp_path: Path) -> None:
    """The authors' mapillary_resize.py, restated here: the image through Pillow's antialiased bicubic to
    (W // 2, H // 2), saved with Pillow's JPEG defaults (equal bytes); the train-ID label through nearest neighbour
    reading source pixel floor((i + 0.5)·H/h) (equal pixels). An even width and an odd height."""
    root = write_dataset("mapillary_raw", tmp_path / "mapillary", num_images=2, size=(42, 31))
    done = _run("prepare_mapillary.py", root, "--workers", "1")
    assert done.returncode == 0, done.stderr
    assert "wrote 2 halved pairs" in done.stdout
    half, raw = MapillaryDataset(root), MapillaryDataset(root, variant="raw")
    assert [s.name for s in half.samples] == [s.name for s in raw.samples]
    for ours, theirs in zip(half.samples, raw.samples):
        with Image.open(theirs.image) as image:
            assert image.size == (42, 31)
            expected = io.BytesIO()
            image.resize((21, 15), Image.Resampling.BICUBIC).save(expected, format="JPEG")
        assert ours.image.read_bytes() == expected.getvalue()

        train_ids = MAPILLARY_V12.to_train_ids(np.array(Image.open(theirs.label)))
        rows = np.floor((np.arange(15) + 0.5) * 31 / 15).astype(int)  # 1, 3, 5, ... 29 (31/15 is not 2)
        cols = np.floor((np.arange(21) + 0.5) * 42 / 21).astype(int)  # 1, 3, 5, ...: the second of each pair
        with Image.open(ours.label) as label:
            assert label.mode == "L"
            np.testing.assert_array_equal(np.asarray(label), train_ids[rows][:, cols])
        first_of_pair = train_ids[rows][:, cols - 1]  # OpenCV's nearest, which the script no longer uses
        assert (first_of_pair != train_ids[rows][:, cols]).any()

    image, label = half.load(0)
    assert image.shape == (15, 21, 3) and label.shape == (15, 21)


def test_bench_data_runs() -> None:
    done = _run("bench_data.py", "--cases", "gta5:64x48", "--images", "2", "--iterations", "2")
    assert done.returncode == 0, done.stderr
    assert "gta5" in done.stdout and "img/s" in done.stdout
