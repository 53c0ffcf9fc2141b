"""MiniDG's speed-ups change no result: with the decoded-file cache, no DataLoader worker and the fixed thread count
a fixed-seed run has exactly the losses and metrics it had without them, and the evaluation's class choice
(`max(1).indices`) is `argmax(1)`'s."""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from PIL import Image

from src.data.datasets.base import DECODE_CACHE, DataWarning, DecodeCache, read_image, read_raw_label
from src.minidg.runtime import TorchThreads
from src.train import train
from tests.conftest import compose_config


def _write_png(path: Path, image: np.ndarray) -> None:
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def test_decode_cache_gives_the_decoded_pixels_fresh_each_time(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    image, label = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8), rng.integers(0, 19, (6, 10), dtype=np.uint8)
    _write_png(tmp_path / "a.png", image)
    Image.fromarray(label).save(tmp_path / "a_label.png")
    cache = DecodeCache()
    first = cache.read(tmp_path / "a.png", read_image)
    assert np.array_equal(first, read_image(tmp_path / "a.png")) and np.array_equal(first, image)
    assert np.array_equal(cache.read(tmp_path / "a_label.png", read_raw_label), label) and len(cache) == 2
    first[:] = 0  # a caller working in place changes its own copy only
    again = cache.read(tmp_path / "a.png", read_image)
    assert np.array_equal(again, image) and again.flags.writeable
    # a rewritten file is decoded again
    _write_png(tmp_path / "a.png", 255 - image)
    stat = os.stat(tmp_path / "a.png")
    os.utime(tmp_path / "a.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert np.array_equal(cache.read(tmp_path / "a.png", read_image), 255 - image)
    assert cache.nbytes == image.nbytes + label.nbytes
    # a missing file fails with the reader's own message
    with pytest.raises(OSError, match="cannot read image"):
        cache.read(tmp_path / "missing.png", read_image)


def test_a_full_decode_cache_decodes_as_before_and_says_so_once(tmp_path: Path) -> None:
    image = np.full((4, 4, 3), 7, np.uint8)
    for name in ("a", "b", "c"):
        _write_png(tmp_path / f"{name}.png", image)
    cache = DecodeCache(limit_bytes=image.nbytes)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name in ("a", "b", "c", "b"):
            assert np.array_equal(cache.read(tmp_path / f"{name}.png", read_image), image)
    assert len(cache) == 1 and cache.nbytes == image.nbytes
    assert [w.category for w in caught] == [DataWarning] and "data.cache_decoded=false" in str(caught[0].message)


def test_max_indices_is_argmax_with_ties_and_nan() -> None:
    """The evaluation step's class choice (``SegmentationModule._eval_step``)."""
    x = torch.randint(0, 3, (4, 19, 16, 32)).float()  # many ties
    x[0, 4, 0, 0] = float("nan")
    x[1, :, 3, 3] = float("nan")
    assert torch.equal(x.max(1).indices, x.argmax(1))


def test_torch_threads_sets_and_restores_the_count() -> None:
    before = torch.get_num_threads()
    callback = TorchThreads(1)
    callback.setup(None, None, "fit")
    assert torch.get_num_threads() == 1
    callback.teardown(None, None, "fit")
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="num_threads >= 1"):
        TorchThreads(0)


SEEN_THREADS: list[int] = []


class ThreadSpy(Callback):
    """Records torch's thread count at every training step."""

    def on_train_batch_start(self, *args, **kwargs) -> None:
        SEEN_THREADS.append(torch.get_num_threads())


def _run(tmp_path: Path, name: str, *overrides: str) -> tuple[list[float], dict[str, float], list[int]]:
    """A fixed-seed DepthForge run on the real MiniDG VFMs (8 steps of batch 4, 4 test scenes per domain): its
    per-step losses, final validation metrics and the thread count seen at each training step."""
    SEEN_THREADS.clear()
    cfg = compose_config(
        [
            "experiment=minidg",
            f"paths.data_dir={tmp_path / 'data'}",
            "data.prepare.num_train=16",
            "data.prepare.num_test=4",
            "+data.prepare.workers=1",
            "data.batch_size=4",
            "trainer.max_steps=8",
            "trainer.val_check_interval=8",
            "trainer.log_every_n_steps=1",
            "callbacks.model_checkpoint.every_n_train_steps=8",
            "+trainer.enable_progress_bar=false",
            f"+callbacks.thread_spy._target_={__name__}.ThreadSpy",
            *overrides,
        ],
        tmp_path / name,
    )
    metrics = train(cfg)
    rows = list(csv.DictReader(next((tmp_path / name / "csv").rglob("metrics.csv")).open()))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    return losses, {k: v for k, v in metrics.items() if k.startswith("val/")}, list(SEEN_THREADS)


def test_the_speed_ups_leave_a_fixed_seed_run_unchanged(tmp_path: Path) -> None:
    """Before: files decoded at every read by one DataLoader worker, one thread set by the launcher (the old sweep).
    After: `experiment=minidg` as shipped (decoded once, no worker, `TorchThreads(1)`), launched with 2 threads."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        before = _run(
            tmp_path,
            "before",
            "data.cache_decoded=false",
            "data.num_workers=1",
            "data.persistent_workers=true",
            "~callbacks.torch_threads",
        )
        torch.set_num_threads(2)
        after = _run(tmp_path, "after")
        assert torch.get_num_threads() == 2  # restored when the run ended
    finally:
        torch.set_num_threads(threads)
        DECODE_CACHE.clear()
    assert before[2] == [1] * 8 and after[2] == [1] * 8
    assert len(before[0]) == 8 and before[0] == after[0]  # every step's loss, bit for bit
    assert before[1] == after[1] and set(after[1]) >= {f"val/{d}/mIoU" for d in ("day", "night", "fog", "snow")}
