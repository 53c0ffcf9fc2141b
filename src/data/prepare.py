"""Offline conversions of raw downloads into the layouts the protocol reads (docs/method.md §6.2).

GTA5: raw palette label-ID PNGs -> `*_labelTrainIds.png` beside them (optional: the dataset maps raw labels on the
fly, the converted files only save that lookup). Mapillary v1.2 val: 66 classes -> train IDs, then image and label
halved to (W//2, H//2) into `half/val_img`, `half/val_label` (required: the protocol evaluates the halved copy).
Both run over a process pool and skip files that already exist unless `overwrite`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from multiprocessing import Pool
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from src.data.datasets import GTA5Dataset, MapillaryDataset, read_raw_label
from src.data.labels import LABEL_IDS, MAPILLARY_V12

Job = tuple[Path, ...]


def _run(function: Callable[[Job], None], jobs: Iterable[Job], workers: int | None) -> int:
    jobs = list(jobs)
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(jobs) < 2:
        for job in jobs:
            function(job)
    else:
        with Pool(workers) as pool:
            for _ in pool.imap_unordered(function, jobs, chunksize=16):
                pass
    return len(jobs)


def _save_label(path: Path, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(label, mode="L").save(path)


def _convert_gta5_label(job: Job) -> None:
    raw_path, out_path = job
    _save_label(out_path, LABEL_IDS.to_train_ids(read_raw_label(raw_path)))


def convert_gta5_labels(root: str | Path, workers: int | None = None, overwrite: bool = False) -> int:
    """Write `labels/<name>_labelTrainIds.png` for every raw `labels/<name>.png`; returns the number written."""
    layout = GTA5Dataset.layout()
    (converted, _), (raw, _) = layout.labels
    label_root = Path(root) / layout.label_dir
    if not label_root.is_dir():
        raise FileNotFoundError(f"GTA5 labels not found: expected {label_root}/*{raw} ({layout.describe()})")
    jobs = []
    for path in sorted(label_root.rglob(f"*{raw}")):
        if path.name.endswith(converted):
            continue
        out = path.with_name(path.name[: -len(raw)] + converted)
        if overwrite or not out.exists():
            jobs.append((path, out))
    return _run(_convert_gta5_label, jobs, workers)


def _halve_mapillary(job: Job) -> None:
    image_path, label_path, image_out, label_out = job
    image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
    if image is None:
        raise OSError(f"cannot read image {image_path}")
    label = MAPILLARY_V12.to_train_ids(read_raw_label(label_path))
    height, width = label.shape
    half = (width // 2, height // 2)
    image_out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(image_out), cv2.resize(image, half, interpolation=cv2.INTER_CUBIC)):
        raise OSError(f"cannot write image {image_out}")
    _save_label(label_out, cv2.resize(label, half, interpolation=cv2.INTER_NEAREST))


def prepare_mapillary(root: str | Path, split: str = "val", workers: int | None = None, overwrite: bool = False) -> int:
    """Convert and halve the raw v1.2 `split` into the `half/` layout; returns the number of pairs written.

    Image: bicubic (OpenCV, as mmcv's imresize), JPEG quality 95 (OpenCV's default); label: nearest.
    """
    raw = MapillaryDataset(root, split, variant="raw")
    half = MapillaryDataset.layout(split, "half")
    (label_suffix, _), root = half.labels[0], Path(root)
    jobs = []
    for sample in raw.samples:
        image_out = root / half.image_dir / f"{sample.name}{half.image_suffix}"
        label_out = root / half.label_dir / f"{sample.name}{label_suffix}"
        if overwrite or not (image_out.exists() and label_out.exists()):
            jobs.append((sample.image, sample.label, image_out, label_out))
    return _run(_halve_mapillary, jobs, workers)
