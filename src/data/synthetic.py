"""Write small generated datasets in the real on-disk layouts (SPEC §6.1), for tests, the smoke experiment and
benchmarks that must run without downloads.

Paths and suffixes come from the dataset classes' `layout()`, so the writer and the readers cannot drift apart;
raw encodings (GTA5 palette label IDs, Cityscapes label IDs, Mapillary 66 classes) are written by inverting the
lookup tables. Everything is deterministic in `seed`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
from PIL import Image

from src.data.datasets import (
    CONDITIONS,
    ACDCDataset,
    BDD100KDataset,
    CityscapesDataset,
    GTA5Dataset,
    Layout,
    MapillaryDataset,
)
from src.data.datasets.synthetic import make_sample, stable_seed
from src.data.labels import IGNORE_INDEX, LABEL_IDS, NUM_CLASSES, PALETTE, LabelEncoding

KINDS = ("gta5", "cityscapes", "bdd100k", "mapillary", "mapillary_raw", "acdc")
DATASET_DIRS = {
    "gta5": GTA5Dataset.default_dir,
    "cityscapes": CityscapesDataset.default_dir,
    "bdd100k": BDD100KDataset.default_dir,
    "mapillary": MapillaryDataset.default_dir,
    "mapillary_raw": MapillaryDataset.default_dir,
    "acdc": ACDCDataset.default_dir,
}
"""Folder of each kind under a data root (`data/gta`, `data/cityscapes`, ...)."""

_DEFAULT_SPLITS = {"cityscapes": ("train", "val")}
_CITIES = {"train": ("aachen", "bochum"), "val": ("frankfurt", "lindau", "munster")}


def _inverse_lut(encoding: LabelEncoding) -> np.ndarray:
    """Train ID (0..18, and 255 at index 255) -> one raw value of `encoding` that maps back to it."""
    inverse = np.zeros(256, np.uint8)
    for train_id in [*range(NUM_CLASSES), IGNORE_INDEX]:
        inverse[train_id] = np.flatnonzero(encoding.known & (encoding.lut == train_id))[0]
    return inverse


def _gta_palette() -> list[int]:
    """Palette of GTA5 label PNGs: each label ID gets the colour of its train class (void: black)."""
    colours = np.zeros((256, 3), np.uint8)
    mapped = LABEL_IDS.lut < NUM_CLASSES
    colours[mapped] = PALETTE[LABEL_IDS.lut[mapped]]
    return colours.flatten().tolist()


def write_image(path: Path, image: np.ndarray) -> None:
    """Write an RGB uint8 image as PNG or JPEG (quality 95, OpenCV's default) by the path's suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if path.suffix.lower() in (".jpg", ".jpeg") else []
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params):
        raise OSError(f"cannot write image {path}")


def write_label(path: Path, label: np.ndarray, palette: list[int] | None = None) -> None:
    """Write a uint8 index map as an 8-bit PNG (a palette PNG when `palette` is given, like GTA5's)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(label, mode="L")
    if palette is not None:
        image = image.convert("P")
        image.putpalette(palette)
    image.save(path)


class _Job(NamedTuple):
    layout: Layout
    stems: list[str]
    domain: str
    encodings: tuple[LabelEncoding, ...]
    palette: list[int] | None = None


def _all(layout: Layout) -> tuple[LabelEncoding, ...]:
    return tuple(encoding for _, encoding in layout.labels)


def _jobs(kind: str, split: str, num_images: int) -> list[_Job]:
    """What to write for one split: file stems (relative, without suffix) in the kind's real naming."""
    index = range(num_images)
    if kind == "gta5":  # raw palette labels only: the converted ones are what scripts/prepare_gta5.py makes
        return [_Job(GTA5Dataset.layout(), [f"{i:05d}" for i in index], "gta5", (LABEL_IDS,), _gta_palette())]
    if kind == "cityscapes":
        layout, cities = CityscapesDataset.layout(split), _CITIES.get(split, (split,))
        stems = [f"{cities[i % len(cities)]}/{cities[i % len(cities)]}_{i:06d}_000019" for i in index]
        return [_Job(layout, stems, "cityscapes", _all(layout))]
    if kind == "bdd100k":
        layout = BDD100KDataset.layout(split)
        return [_Job(layout, [f"{stable_seed(split)[0]:08x}-{i:08x}" for i in index], "bdd100k", _all(layout))]
    if kind in ("mapillary", "mapillary_raw"):
        layout = MapillaryDataset.layout(split, "half" if kind == "mapillary" else "raw")
        return [_Job(layout, [f"{split}{i:06d}_synthetic" for i in index], "mapillary", _all(layout))]
    stems = [f"GOPR{i // 2:04d}/GOPR{i // 2:04d}_frame_{i:06d}" for i in index]
    return [_Job(layout, stems, c, _all(layout)) for c in CONDITIONS for layout in [ACDCDataset.layout(split, c)]]


def _write(root: Path, job: _Job, size: tuple[int, int], seed: int) -> None:
    layout = job.layout
    for stem in job.stems:
        rng = np.random.default_rng(stable_seed(seed, job.domain, stem))
        image, train_ids = make_sample(rng, size, job.domain)
        write_image(root / layout.image_dir / f"{stem}{layout.image_suffix}", image)
        for suffix, encoding in layout.labels:
            if encoding in job.encodings:
                label = _inverse_lut(encoding)[train_ids]
                write_label(root / layout.label_dir / f"{stem}{suffix}", label, job.palette)


def write_dataset(
    kind: str,
    root: str | Path,
    num_images: int = 4,
    size: tuple[int, int] = (128, 64),
    seed: int = 0,
    splits: Sequence[str] | None = None,
) -> Path:
    """Write `num_images` scenes of `size` = (W, H) per split (per condition for ACDC) under the dataset root.

    Kinds: `gta5` (raw palette label-ID PNGs, no split), `cityscapes` (labelTrainIds and labelIds; default splits
    train and val), `bdd100k` (jpg + train-ID masks), `mapillary` (the halved train-ID copy), `mapillary_raw`
    (v1.2 66-class release), `acdc` (all four conditions, `<seq>` folders). Other splits default to `val`.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; one of {KINDS}")
    root = Path(root)
    splits = ("all",) if kind == "gta5" else tuple(splits or _DEFAULT_SPLITS.get(kind, ("val",)))
    for split in splits:
        for job in _jobs(kind, split, num_images):
            _write(root, job, size, seed)
    return root


def write_dg_benchmark(
    root: str | Path,
    num_images: int = 4,
    size: tuple[int, int] = (128, 64),
    seed: int = 0,
    kinds: Sequence[str] = ("cityscapes", "acdc"),
) -> Path:
    """A data root with a source and target datasets in their usual folders (default: Cityscapes -> ACDC)."""
    root = Path(root)
    for kind in kinds:
        write_dataset(kind, root / DATASET_DIRS[kind], num_images, size, seed)
    return root
