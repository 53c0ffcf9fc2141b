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
    """One pair, as the authors' `tools/convert_datasets/mapillary_resize.py` does it, call for call:

    - image: Pillow `Image.resize((W // 2, H // 2), Image.BICUBIC)` (antialiased: the kernel widens with the
      factor), saved with Pillow's JPEG defaults (quality 75, 4:2:0, no EXIF/ICC);
    - label: the 66 classes mapped to train IDs at full size, then Pillow's `Image.NEAREST` to the same size, which
      reads source pixel floor((i + 0.5)·H/h) (the second pixel of each pair for an even side), saved as 8-bit PNG.
    """
    image_path, label_path, image_out, label_out = job
    try:
        with Image.open(image_path) as image:
            width, height = image.size
            half = (width // 2, height // 2)
            small = image.resize(half, resample=Image.Resampling.BICUBIC)
    except OSError as error:
        raise OSError(f"cannot read image {image_path}: {error}") from error
    train_ids = Image.fromarray(MAPILLARY_V12.to_train_ids(read_raw_label(label_path)))
    image_out.parent.mkdir(parents=True, exist_ok=True)
    label_out.parent.mkdir(parents=True, exist_ok=True)
    small.save(image_out)
    train_ids.resize(half, resample=Image.Resampling.NEAREST).save(label_out)


def prepare_mapillary(root: str | Path, split: str = "val", workers: int | None = None, overwrite: bool = False) -> int:
    """Convert and halve the raw v1.2 `split` into the `half/` layout; returns the number of pairs written.

    The halving is the authors' (see `_halve_mapillary`), so the evaluated pixels are theirs (docs/reproduction.md).
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
