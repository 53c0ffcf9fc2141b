"""Cityscapes-C: the corruption generator on generated Cityscapes trees, the corrupted target domains, the report."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from src.data.corruptions import (
    CORRUPTIONS,
    SEVERITIES,
    corrupt_image,
    corrupted_root,
    corruption_grid,
    corruption_report,
    generate_corruptions,
    manifest,
    output_seed,
    parse_domain,
    read_results,
)
from src.data.datasets import CityscapesDataset, read_image
from src.data.datasets.corrupted import CorruptedDataset
from src.data.synthetic import write_dataset
from src.utils.instantiate import check_config, instantiate_checked
from tests.conftest import TINY, compose_config

REPO = Path(__file__).resolve().parents[2]
PICKED = ("gaussian_noise", "fog")
LEVELS = (1, 3)


def _tree(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under `root`."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def _script():
    spec = importlib.util.spec_from_file_location("make_corruptions", REPO / "scripts" / "make_corruptions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def cityscapes(tmp_path: Path) -> Path:
    """A data root with a generated Cityscapes tree (2 images of 64x32 per split)."""
    write_dataset("cityscapes", tmp_path / "data" / "cityscapes", num_images=2, size=(64, 32))
    return tmp_path / "data" / "cityscapes"


def test_generator_writes_the_source_layout_deterministically_and_resumes(cityscapes: Path, tmp_path: Path) -> None:
    source = CityscapesDataset(cityscapes, "val")
    before = _tree(cityscapes)
    out = tmp_path / "data" / "cityscapes_c"
    seen = []
    result = generate_corruptions(cityscapes, out, corruptions=PICKED, severities=LEVELS, seed=7, progress=seen.append)
    assert (result.images, result.written, result.skipped) == (2, 8, 0)
    assert (seen[-1].images_done, seen[-1].written) == (2, 8)

    for c in PICKED:
        for s in LEVELS:
            for sample in source.samples:
                path = out / c / str(s) / "leftImg8bit" / "val" / f"{sample.name}_leftImg8bit.png"
                assert path == corrupted_root(out, c, s) / sample.image.relative_to(cityscapes)
                corrupted, clean = read_image(path), read_image(sample.image)
                assert corrupted.shape == clean.shape == (32, 64, 3)
                assert (corrupted != clean).mean() > 0.5
    assert _tree(cityscapes) == before  # the source is untouched
    assert not list(out.rglob("gtFine")) and not list(out.rglob(".*.partial"))  # labels referenced, no temporaries

    # the same seed gives the same bytes, with any number of processes; another seed other noise
    again = tmp_path / "again"
    generate_corruptions(cityscapes, again, corruptions=PICKED, severities=LEVELS, seed=7, workers=2)
    files = {k: v for k, v in _tree(out).items() if k.endswith(".png")}
    assert files == {k: v for k, v in _tree(again).items() if k.endswith(".png")}
    other = tmp_path / "other"
    generate_corruptions(cityscapes, other, corruptions=["gaussian_noise"], severities=[1], seed=8)
    noise = "gaussian_noise/1/leftImg8bit/val/frankfurt/frankfurt_000000_000019_leftImg8bit.png"
    assert _tree(other)[noise] != files[noise]

    # a rerun skips everything; a lost file and a killed run's temporary are made good by the next run
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    rerun = generate_corruptions(cityscapes, out, corruptions=PICKED, severities=LEVELS, seed=7)
    assert (rerun.written, rerun.skipped) == (0, 8)
    assert mtimes == {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    lost = out / noise
    lost.unlink()
    stale = lost.with_name(f".{lost.name}.12345.partial")
    stale.write_bytes(b"half an image")
    with pytest.raises(FileNotFoundError, match=r"(?s)lacks 1 of the source's images .*make_corruptions.py"):
        CorruptedDataset(out, cityscapes, "gaussian_noise", 1)
    resumed = generate_corruptions(cityscapes, out, corruptions=PICKED, severities=LEVELS, seed=7)
    assert (resumed.written, resumed.skipped) == (1, 7)
    assert _tree(out)[noise] == files[noise] and not stale.exists()

    with pytest.raises(ValueError, match="records seed=7"):  # one output root holds one seed
        generate_corruptions(cityscapes, out, corruptions=PICKED, severities=LEVELS, seed=8)


def test_corrupted_domains_read_the_source_labels(cityscapes: Path, tmp_path: Path) -> None:
    out = tmp_path / "data" / "cityscapes_c"
    generate_corruptions(cityscapes, out, corruptions=PICKED, severities=[5], link_labels=True)
    source = CityscapesDataset(cityscapes, "val")
    for c in PICKED:
        domain = CorruptedDataset(out, cityscapes, c, 5)
        assert [s.name for s in domain.samples] == [s.name for s in source.samples]
        assert [s.label for s in domain.samples] == [s.label for s in source.samples]  # the source's own files
        for i in range(len(source)):
            (image, label), (clean, clean_label) = domain.load(i), source.load(i)
            assert image.shape == clean.shape and not np.array_equal(image, clean)
            np.testing.assert_array_equal(label, clean_label)
        # --link-labels: each corruption is also a complete Cityscapes tree, its labels hard links to the source's
        linked = CityscapesDataset(corrupted_root(out, c, 5), "val")
        assert all(os.path.samefile(a.label, b.label) for a, b in zip(linked.samples, source.samples))

    with pytest.raises(FileNotFoundError, match="(?s)no snow severity 5 images.*--corruptions snow --severities 5"):
        CorruptedDataset(out, cityscapes, "snow", 5)
    with pytest.raises(ValueError, match="holds corruptions of cityscapes"):
        CorruptedDataset(out, cityscapes, "fog", 5, layout={"split": "train"})
    generate_corruptions(cityscapes, out, layout={"split": "train"}, corruptions=["fog"], severities=[5])
    assert manifest(out)["layouts"] == [{"split": "val"}, {"split": "train"}]  # splits share an output root
    assert len(CorruptedDataset(out, cityscapes, "fog", 5, layout={"split": "train"})) == 2
    for bad_out in (cityscapes, cityscapes / "c", cityscapes.parent):  # never into (or around) the source
        with pytest.raises(ValueError, match="must lie outside the source"):
            generate_corruptions(cityscapes, bad_out, corruptions=["fog"], severities=[1])


def test_citys_c_target_config_composes_and_reads_every_domain(cityscapes: Path, tmp_path: Path) -> None:
    data = cityscapes.parent
    generate_corruptions(cityscapes, data / "cityscapes_c", corruptions=PICKED, severities=LEVELS)
    base = ["experiment=gta2citys", *TINY, "data/targets=citys_c", f"paths.data_dir={data}", "ckpt_path=x.ckpt"]

    full = compose_config(base, tmp_path / "out", config_name="eval")
    check_config(full)
    everything = instantiate_checked(full.data, "data")  # building touches no file
    assert everything.target_names == ["clean", *(f"{c}_{s}" for c in CORRUPTIONS for s in SEVERITIES)]
    assert everything.mean_domains == everything.target_names[1:]

    picked = ["data.targets.corruptions=[gaussian_noise,fog]", "data.targets.severities=[1,3]"]
    cfg = compose_config([*base, *picked], tmp_path / "out", config_name="eval")
    datamodule = instantiate_checked(cfg.data, "data")
    datamodule.setup("test")
    names = ["gaussian_noise_1", "gaussian_noise_3", "fog_1", "fog_3"]
    assert datamodule.target_names == ["clean", *names] and datamodule.mean_domains == names
    clean = datamodule.targets["clean"]
    for name in names:
        domain = datamodule.targets[name]
        assert isinstance(domain, CorruptedDataset) and len(domain) == len(clean) == 2
        for i in range(len(domain)):
            item, reference = domain[i], clean[i]
            assert item["name"] == reference["name"]
            assert item["image"].shape == reference["image"].shape == (3, 512, 1024)  # the test transform
            assert not item["image"].equal(reference["image"])
            assert item["label"].equal(reference["label"])

    wrong = compose_config([*base, "data.targets.corruptions=[rain]"], tmp_path / "out", config_name="eval")
    with pytest.raises(Exception, match="unknown corruption"):
        instantiate_checked(wrong.data, "data")


def test_report_aggregates_a_results_csv_exactly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    miou = {"gaussian_noise": (10.0, 20.0), "fog": (30.5, 40.5), "contrast": (50.25, 60.25)}
    path = tmp_path / "results.csv"
    with path.open("w", newline="") as f:  # src.eval's format: one row per domain, then the mean row
        writer = csv.DictWriter(f, fieldnames=["domain", "mIoU", "aAcc", "road"])
        writer.writeheader()
        writer.writerow({"domain": "clean", "mIoU": "70.00", "aAcc": "90.00", "road": "95.00"})
        for c, (one, five) in miou.items():
            writer.writerow({"domain": f"{c}_1", "mIoU": f"{one:.2f}", "aAcc": "80.00", "road": "nan"})
            writer.writerow({"domain": f"{c}_5", "mIoU": f"{five:.2f}", "aAcc": "70.00", "road": "nan"})
        writer.writerow({"domain": "mean(gaussian_noise_1,...)", "mIoU": "99.99"})

    report = corruption_report(read_results(tmp_path))
    assert list(report.table) == ["gaussian_noise", "fog", "contrast"]  # ImageNet-C's order
    assert report.per_corruption == {"gaussian_noise": 15.0, "fog": 35.5, "contrast": 55.25}
    assert report.per_severity == {1: 30.25, 5: 40.25}  # (10 + 30.5 + 50.25) / 3, (20 + 40.5 + 60.25) / 3
    assert report.mean == 35.25  # 211.5 / 6
    assert report.per_family == {"noise": 15.0, "weather": 35.5, "digital": 55.25}
    assert report.others == {"clean": 70.0} and report.missing == []
    text = report.markdown()
    assert "| fog | weather | 30.50 | 40.50 | 35.50 |" in text and "| mean |  | 30.25 | 40.25 | 35.25 |" in text
    assert "severity 5 (the level of REIN's Cityscapes-C number): **40.25**" in text and "clean: 70.00" in text

    partial = corruption_report({"fog_1": 30.0, "fog_5": 40.0, "contrast_1": 50.0})
    assert partial.missing == ["contrast_5"] and partial.per_severity == {1: 40.0, 5: 40.0}
    assert partial.mean == 40.0 and partial.per_corruption == {"fog": 35.0, "contrast": 50.0}
    assert (parse_domain("fog_3"), parse_domain("gaussian_noise_5"), parse_domain("fog_6")) == (
        ("fog", 3),
        ("gaussian_noise", 5),
        None,
    )

    script = _script()
    assert script.main(["--report", str(path), "-o", str(tmp_path / "table.csv")]) == 0
    with (tmp_path / "table.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows[-1] == {"corruption": "mean", "family": "", "1": "30.25", "5": "40.25", "mean": "35.25"}
    assert (
        script.main(["--report", str(tmp_path)]) == 0
        and "| gaussian_noise | noise | 10.00 | 20.00 | 15.00 |" in capsys.readouterr().out
    )


def test_one_image_the_grid_and_the_global_rng(cityscapes: Path, tmp_path: Path) -> None:
    sample = CityscapesDataset(cityscapes, "val").samples[0]
    image = read_image(sample.image)
    np.random.seed(3)
    expected = np.random.rand(3)
    np.random.seed(3)
    first = corrupt_image(image, "gaussian_noise", 2, seed=11)
    assert np.array_equal(np.random.rand(3), expected)  # the library's draws do not shift the caller's stream
    assert np.array_equal(first, corrupt_image(image, "gaussian_noise", 2, seed=11))
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt_image(image, "rain", 2, seed=0)

    grid = corruption_grid(image, PICKED, [5], seed=0, name=sample.name)
    out = tmp_path / "c"
    generate_corruptions(cityscapes, out, corruptions=PICKED, severities=[5], seed=0)
    top, left, gap = 18, 118, 2
    assert grid.shape == (top + 2 * (32 + gap), left + 2 * (64 + gap), 3)
    for i, c in enumerate(PICKED):  # the tiles are the files the generator writes for that image
        tile = grid[top + i * (32 + gap) : top + i * (32 + gap) + 32, left + 64 + gap : left + 64 + gap + 64]
        written = read_image(corrupted_root(out, c, 5) / "leftImg8bit" / "val" / f"{sample.name}_leftImg8bit.png")
        np.testing.assert_array_equal(tile, written)
    assert output_seed(0, "fog", 5, sample.name) != output_seed(0, "fog", 4, sample.name)


def test_script_counts_and_fails_loudly_on_an_unreadable_image(
    cityscapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "data" / "cityscapes_c"
    args = [str(cityscapes), str(out), "--corruptions", "fog", "--severities", "2", "--workers", "1"]
    script = _script()
    assert script.main(args) == 0
    assert "done: 2 written, 0 skipped (already there) of 2" in capsys.readouterr().out
    assert script.main([*args, "--severities", "2", "4"]) == 0
    printed = capsys.readouterr().out
    assert (
        "[2/2 images] 2 corrupted images written, 2 already there" in printed
        and "done: 2 written, 2 skipped" in printed
    )

    broken = CityscapesDataset(cityscapes, "val").samples[1].image
    broken.write_bytes(b"not a png")
    for written in (out / "fog").rglob("*.png"):
        written.unlink()
    command = [sys.executable, str(REPO / "scripts" / "make_corruptions.py"), *args]
    failed = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert failed.returncode == 1
    assert f"error: cannot read image {broken}" in failed.stderr
