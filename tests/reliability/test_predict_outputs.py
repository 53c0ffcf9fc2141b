"""src.predict never writes onto an input, never writes two outputs to one path, writes atomically, counts truly."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import src.predict as predict
from src.predict import PredictionError, predict_folder, write_png
from src.utils.checkpoint import CheckpointError, atomic_torch_save
from src.utils.instantiate import build_module
from tests.conftest import compose_config

ROOT = Path(__file__).resolve().parents[2]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trainable-only checkpoint of the smoke model, written as Lightning's checkpoint hook writes it."""
    out = tmp_path_factory.mktemp("ckpt")
    module = build_module(compose_config(["experiment=smoke", f"paths.data_dir={out / 'data'}"], out))
    ckpt: dict = {}
    module.on_save_checkpoint(ckpt)
    atomic_torch_save(ckpt, out / "last.ckpt")
    return out / "last.ckpt"


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """a.jpg and a.png (the same output name), c.png, and sub/d.png, as a user's folder of photos."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "a.png", "c.png", "sub/d.png"):
        cv2.imwrite(str(folder / name), rng.integers(0, 255, (64, 128, 3), dtype=np.uint8))
    return folder


def _cfg(checkpoint: Path, tmp_path: Path, input_dir: Path, output_dir: Path, *extra: str):
    overrides = ["experiment=smoke", f"ckpt_path={checkpoint}", f"input_dir={input_dir}", f"output_dir={output_dir}"]
    return compose_config([*overrides, "scale=[128,64]", *extra], tmp_path / "run", config_name="predict")


@pytest.mark.parametrize("where", ["same", "inside"])
def test_output_inside_input_dir_is_refused_and_inputs_untouched(
    checkpoint: Path, photos: Path, tmp_path: Path, where: str
) -> None:
    before = _snapshot(photos)
    out = photos if where == "same" else photos / "predictions"
    with pytest.raises(PredictionError) as info:
        predict_folder(_cfg(checkpoint, tmp_path, photos, out))
    message = str(info.value)
    assert f"output_dir={out} would put predictions inside input_dir={photos}" in message
    assert f"fix: an output_dir outside input_dir, e.g. output_dir={photos.parent / 'photos_predictions'}" in message
    assert _snapshot(photos) == before and not (photos / "predictions").exists()


def test_same_name_inputs_get_distinct_outputs_and_the_count_is_true(
    checkpoint: Path, photos: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    before = _snapshot(photos)
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="src.predict"):
        written = predict_folder(_cfg(checkpoint, tmp_path, photos, out))
    expected = {"a.jpg.png", "a.png.png", "c.png", "sub/d.png"}
    assert {str(p.relative_to(out)) for p in written} == expected == set(_snapshot(out))
    assert all(cv2.imread(str(p)) is not None for p in written)
    assert f"wrote 4 predictions to {out}" in caplog.text and "each keeps its suffix" in caplog.text
    assert _snapshot(photos) == before


def test_existing_outputs_are_kept_unless_overwrite(checkpoint: Path, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "c.png").write_bytes(b"an earlier result")
    with pytest.raises(PredictionError, match=r"already holds 1 of the 4 files .*c.png\n  fix: overwrite=true"):
        predict_folder(_cfg(checkpoint, tmp_path, photos, out))
    assert _snapshot(out) == {"c.png": b"an earlier result"}
    written = predict_folder(_cfg(checkpoint, tmp_path, photos, out, "overwrite=true"))
    assert len(written) == 4 and cv2.imread(str(out / "c.png")) is not None
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_failure_part_way_logs_the_true_count_and_leaves_whole_files(
    checkpoint: Path, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    calls = []
    colorize = predict.colorize

    def fail_on_third(pred):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated failure")
        return colorize(pred)

    monkeypatch.setattr(predict, "colorize", fail_on_third)
    with caplog.at_level(logging.INFO, logger="src.predict"), pytest.raises(RuntimeError, match="simulated"):
        predict_folder(_cfg(checkpoint, tmp_path, photos, out))
    assert f"wrote 2 of 4 predictions to {out} before the error below" in caplog.text
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) == 2 and all(cv2.imread(str(p)) is not None for p in files)


def test_interrupted_write_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "c.png"
    target.write_bytes(b"previous")

    def crash(fd: int) -> None:  # the bytes are in the temporary file, the rename has not happened yet
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        write_png(target, np.zeros((4, 4, 3), np.uint8))
    monkeypatch.undo()
    assert target.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["c.png"]


def test_not_an_image_and_missing_keys_are_refused_before_the_model(photos: Path, tmp_path: Path) -> None:
    (photos / "broken.jpg").write_bytes(b"<html>not an image</html>")
    fake_ckpt = tmp_path / "unused.ckpt"
    with pytest.raises(PredictionError, match=r"not images OpenCV can read: .*broken.jpg \(25 bytes\)"):
        predict_folder(_cfg(fake_ckpt, tmp_path, photos, tmp_path / "out"))
    cfg = compose_config(["experiment=smoke", f"input_dir={photos}"], tmp_path / "run", config_name="predict")
    with pytest.raises(PredictionError, match="ckpt_path is not set\n  fix: add ckpt_path="):
        predict_folder(cfg)
    assert not (tmp_path / "out").exists()


def test_checkpoint_that_is_not_depthforge_names_the_file(checkpoint: Path, photos: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.ckpt"
    atomic_torch_save({"weights": {}}, other)
    with pytest.raises(CheckpointError, match=f"{other} is not a depthforge checkpoint .*\n  fix: point ckpt_path"):
        predict_folder(_cfg(other, tmp_path, photos, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_real_entry_point_refuses_output_dir_equal_to_input_dir(checkpoint: Path, photos: Path, tmp_path: Path) -> None:
    before = _snapshot(photos)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    env.pop("HYDRA_FULL_ERROR", None)
    cmd = [sys.executable, "-m", "src.predict", "experiment=smoke", f"ckpt_path={checkpoint}"]
    cmd += [f"input_dir={photos}", f"output_dir={photos}", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f"output_dir={photos} would put predictions inside input_dir={photos}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert _snapshot(photos) == before
