"""src.submit on the generated data: the ACDC and Cityscapes test-server zips (names, encoding, full size, the
model's prediction), a val export that scores exactly as src.eval, and the output safety of src.predict."""

from __future__ import annotations

import fnmatch
import io
import zipfile
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from src.data.datasets import ACDCDataset, CityscapesDataset, read_image
from src.data.labels import LABEL_ID_TO_TRAIN_ID, LABEL_IDS, NUM_CLASSES
from src.data.synthetic import write_dataset
from src.data.transforms import build_test_transform
from src.eval import evaluate
from src.metrics import SegmentationIoU
from src.submit import SubmissionError, write_submission
from src.train import train
from src.utils.checkpoint import safe_torch_load
from src.utils.instantiate import build_module
from tests.conftest import compose_config

CONDITIONS = ("fog", "night", "rain", "snow")
DATA = ["experiment=smoke", "data.prepare.num_images=4"]
TEST_SIZE = (192, 96)  # (W, H): the test images are larger than the smoke test resize (128x64), as real ones are
SCALE = (128, 64)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    """A 2-step smoke training, and unlabelled test splits beside its generated Cityscapes/ACDC val data."""
    out = tmp_path_factory.mktemp("submit")
    data = out / "data"
    overrides = [
        *DATA,
        f"paths.data_dir={data}",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "callbacks.model_checkpoint.every_n_train_steps=2",
        "test=false",
    ]
    train(compose_config(overrides, out / "run"))
    write_dataset("acdc", data / "smoke" / "acdc", num_images=3, size=TEST_SIZE, seed=5, splits=["test"])
    write_dataset("cityscapes", data / "smoke" / "cityscapes", num_images=3, size=TEST_SIZE, seed=5, splits=["test"])
    return {"data": data, "ckpt": out / "run" / "checkpoints" / "last.ckpt", "out": out}


def _citys_target(run: dict[str, Path]) -> str:
    """A Cityscapes target as gta2citys has one (the smoke experiment targets ACDC only)."""
    root = run["data"] / "smoke" / "cityscapes"
    return (
        "data.targets.citys={_target_:src.data.datasets.cityscapes.CityscapesDataset,_partial_:true,"
        f"root:'{root}',split:val,transform:{{_target_:src.data.transforms.build_test_transform,scale:[128,64]}}}}"
    )


def _config(run: dict[str, Path], out: Path, *extra: str):
    base = [*DATA, f"paths.data_dir={run['data']}", f"ckpt_path={run['ckpt']}"]
    return compose_config([*base, *extra], out, config_name="submit")


def _members(path: Path) -> dict[str, np.ndarray]:
    """Zip member -> its decoded PNG, checked to be an 8-bit single-channel image."""
    out = {}
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        for name in archive.namelist():
            with Image.open(io.BytesIO(archive.read(name))) as image:
                assert image.format == "PNG" and image.mode == "L", (name, image.mode)
                out[name] = np.asarray(image)
    return out


def _model(run: dict[str, Path], out: Path):
    """The checkpoint's module, built as src.train built it (its seed: the same random-init VFMs)."""
    cfg = _config(run, out, "benchmark=acdc")
    L.seed_everything(cfg.seed, verbose=False)
    model = build_module(cfg)
    model.on_load_checkpoint(safe_torch_load(run["ckpt"]))
    return model.eval()


@torch.no_grad()
def _prediction(model, image_path: Path) -> np.ndarray:
    """The evaluator's prediction, written out independently: resize, slide windows, full-size bilinear, argmax."""
    image = read_image(image_path)
    x = build_test_transform(SCALE)(image=image)["image"][None]
    probs = F.interpolate(model(x), size=image.shape[:2], mode="bilinear", align_corners=False)
    return probs.argmax(1)[0].numpy().astype(np.uint8)


def test_acdc_zip_has_a_train_id_png_per_test_image_named_as_the_server_expects(run, tmp_path):
    zip_path = write_submission(_config(run, tmp_path / "a", "benchmark=acdc", "batch_size=2"))
    assert zip_path == tmp_path / "a" / "acdc_submission.zip"
    root = run["data"] / "smoke" / "acdc"
    images = {p.name: p for c in CONDITIONS for p in (root / "rgb_anon" / c / "test").rglob("*_rgb_anon.png")}
    members = _members(zip_path)
    # one PNG per test image of the four conditions, flat, named as the image file (GOPR…_frame_…_rgb_anon.png)
    assert sorted(members) == sorted(images) and len(members) == 12
    assert "GOPR0500_frame_000000_rgb_anon.png" in members and "GOPR0801_frame_000002_rgb_anon.png" in members
    model = _model(run, tmp_path / "m")
    for name, ids in members.items():
        assert ids.shape == (TEST_SIZE[1], TEST_SIZE[0])  # the image's full size, not the network's 128x64
        assert set(np.unique(ids)) <= set(range(NUM_CLASSES))  # train IDs: road 0 … bicycle 18
        np.testing.assert_array_equal(ids, _prediction(model, images[name]), err_msg=name)
    # the same checkpoint gives the same bytes (fixed member dates, deterministic model)
    again = write_submission(_config(run, tmp_path / "b", "benchmark=acdc"))
    assert again.read_bytes() == zip_path.read_bytes()


def test_cityscapes_zip_has_a_label_id_png_per_test_image_found_by_cityscapesscripts(run, tmp_path):
    zip_path = write_submission(_config(run, tmp_path, "benchmark=cityscapes", _citys_target(run)))
    assert zip_path.name == "cityscapes_submission.zip"
    root = run["data"] / "smoke" / "cityscapes" / "leftImg8bit" / "test"
    images = {p.relative_to(root).as_posix(): p for p in root.rglob("*_leftImg8bit.png")}
    members = _members(zip_path)
    assert (
        sorted(members)
        == sorted(images)
        == [
            "berlin/berlin_000000_000019_leftImg8bit.png",
            "bielefeld/bielefeld_000001_000019_leftImg8bit.png",
            "bonn/bonn_000002_000019_leftImg8bit.png",
        ]
    )
    # cityscapesscripts finds the prediction of <city>_<seq>_<frame> by that pattern: exactly one file each
    for rel in images:
        city, seq, frame = Path(rel).name.split("_")[:3]
        assert len(fnmatch.filter([Path(m).name for m in members], f"{city}_{seq}_{frame}*.png")) == 1
    model = _model(run, tmp_path / "m")
    label_ids = set(LABEL_ID_TO_TRAIN_ID)  # road 7 … bicycle 33
    for name, ids in members.items():
        assert ids.shape == (TEST_SIZE[1], TEST_SIZE[0]) and set(np.unique(ids)) <= label_ids
        np.testing.assert_array_equal(LABEL_IDS.to_train_ids(ids), _prediction(model, images[name]), err_msg=name)


def test_a_val_export_scores_exactly_as_src_eval(run, tmp_path):
    """The export is the evaluator's prediction: the Cityscapes val split exported in the server's format, decoded
    back to train IDs and scored against the labels, gives src.eval's mIoU for that domain."""
    target = _citys_target(run)
    zip_path = write_submission(_config(run, tmp_path / "sub", "benchmark=cityscapes", "split=val", target))
    members = _members(zip_path)
    dataset = CityscapesDataset(run["data"] / "smoke" / "cityscapes", "val")
    assert sorted(members) == sorted(f"{s.name}_leftImg8bit.png" for s in dataset.samples)
    metric = SegmentationIoU()
    for i, sample in enumerate(dataset.samples):
        pred = LABEL_IDS.to_train_ids(members[f"{sample.name}_leftImg8bit.png"])
        metric.update(torch.from_numpy(pred).long()[None], torch.from_numpy(dataset.load(i)[1]).long()[None])
    base = [*DATA, f"paths.data_dir={run['data']}", f"ckpt_path={run['ckpt']}", target]
    rows = evaluate(compose_config(base, tmp_path / "eval", config_name="eval"))
    scored = next(r for r in rows if r["domain"] == "citys")
    assert f"{float(metric.compute()['mIoU']):.2f}" == scored["mIoU"]


def test_names_that_would_clash_are_refused(run, tmp_path):
    # the generated val conditions reuse the same names (real ACDC's never do): a flat zip would lose images
    with pytest.raises(SubmissionError, match="would be used by more than one image"):
        write_submission(_config(run, tmp_path, "benchmark=acdc", "split=val"))
    assert not any(tmp_path.rglob("*.zip"))


def test_a_labelled_split_without_labels_is_still_an_error(run):
    root = run["data"] / "smoke" / "acdc"
    with pytest.raises(FileNotFoundError, match="3 of 3 images .* have no label"):
        ACDCDataset(root, split="test", condition="fog")
    assert len(ACDCDataset(root, split="test", condition="fog", labelled=False)) == 3


def test_nothing_is_written_into_the_data_and_nothing_is_replaced_half_way(run, tmp_path, monkeypatch):
    inside = run["data"] / "smoke" / "acdc" / "predictions"
    with pytest.raises(SubmissionError, match="inside the data"):
        write_submission(_config(run, tmp_path, "benchmark=acdc", f"output_dir={inside}"))
    assert not inside.exists()
    with pytest.raises(SubmissionError, match="benchmark=kitti is not a benchmark"):
        write_submission(_config(run, tmp_path, "benchmark=kitti"))
    existing = tmp_path / "out" / "acdc_submission.zip"
    existing.parent.mkdir()
    existing.write_bytes(b"an earlier submission")
    with pytest.raises(SubmissionError, match="(?s)already exists.*overwrite=true"):
        write_submission(_config(run, tmp_path, "benchmark=acdc", f"output_dir={existing.parent}"))
    # a run that fails part-way leaves the earlier zip as it was and no temporary file
    calls = []

    def failing(ids):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("simulated crash")
        return b"png"

    monkeypatch.setattr("src.submit.png_bytes", failing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        write_submission(_config(run, tmp_path, "benchmark=acdc", f"output_dir={existing.parent}", "overwrite=true"))
    assert existing.read_bytes() == b"an earlier submission" and sorted(existing.parent.iterdir()) == [existing]
