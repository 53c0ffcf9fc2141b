"""Write small generated datasets in the real on-disk layouts (docs/method.md §6.1), for tests, the smoke experiment
and benchmarks that must run without downloads.

Everything dataset-specific comes from the dataset classes of the registry `src.data.datasets.DATASETS`: their
folders, kinds, default splits, layouts and file stems (`synthetic_*`), so the writer and the readers cannot drift
apart. Raw encodings (GTA5 palette label IDs, Cityscapes label IDs, Mapillary 66 classes) are written by inverting
the lookup tables. Everything is deterministic in `seed`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from src.data.datasets import DATASETS, Layout, LayoutDataset
from src.data.datasets.synthetic import make_sample, stable_seed
from src.data.labels import IGNORE_INDEX, NUM_CLASSES, PALETTE, LabelEncoding


def dataset_kinds() -> dict[str, tuple[type[LayoutDataset], dict[str, str]]]:
    """Every kind `write_dataset` writes (a dataset's `key`, and variants such as `mapillary_raw`) -> its class and
    `layout` keyword arguments, over the registered dataset classes (added ones included)."""
    return {kind: (cls, variant) for cls in DATASETS.values() for kind, variant in cls.synthetic_kinds().items()}


KINDS = tuple(dataset_kinds())
"""The kinds of the datasets shipped with the package: each dataset's `key`, and `mapillary_raw`."""
DATASET_DIRS = {kind: cls.default_dir for kind, (cls, _) in dataset_kinds().items()}
"""Folder of each shipped kind under a data root (`data/gta`, `data/cityscapes`, ...)."""


def _inverse_lut(encoding: LabelEncoding) -> np.ndarray:
    """Train ID (0..18, and IGNORE_INDEX) -> one raw value of `encoding` that maps back to it."""
    inverse = np.zeros(256, np.uint8)
    for train_id in [*range(NUM_CLASSES), IGNORE_INDEX]:
        inverse[train_id] = np.flatnonzero(encoding.known & (encoding.lut == train_id))[0]
    return inverse


def _palette(encoding: LabelEncoding) -> list[int]:
    """Palette of a palette-PNG label (GTA5's): each raw value gets the colour of its train class (ignore: black)."""
    colours = np.zeros((256, 3), np.uint8)
    mapped = encoding.lut < NUM_CLASSES
    colours[mapped] = PALETTE[encoding.lut[mapped]]
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


def _write(
    root: Path,
    domain: str,
    layout: Layout,
    stems: list[str],
    size: tuple[int, int],
    seed: int,
    palette: bool,
    labelled: bool = True,
) -> None:
    """One generated scene per stem: the image, and its label in every encoding `layout` lists (none when
    `labelled` is False: a test split)."""
    encodings = layout.labels if labelled else ()
    labels = [(suffix, _inverse_lut(enc), _palette(enc) if palette else None) for suffix, enc in encodings]
    for stem in stems:
        rng = np.random.default_rng(stable_seed(seed, domain, stem))
        image, train_ids = make_sample(rng, size, domain)
        write_image(root / layout.image_dir / f"{stem}{layout.image_suffix}", image)
        for suffix, inverse, colours in labels:
            write_label(root / layout.label_dir / f"{stem}{suffix}", inverse[train_ids], colours)


def write_dataset(
    kind: str,
    root: str | Path,
    num_images: int = 4,
    size: tuple[int, int] = (128, 64),
    seed: int = 0,
    splits: Sequence[str] | None = None,
) -> Path:
    """Write `num_images` scenes of `size` = (W, H) per split (per condition for ACDC) under the dataset root.

    Kinds (`KINDS`): `gta5` (raw palette label-ID PNGs, no split), `cityscapes` (labelTrainIds and labelIds;
    default splits train and val), `bdd100k` (jpg + train-ID masks), `mapillary` (the halved train-ID copy),
    `mapillary_raw` (v1.2 66-class release), `acdc` (all four conditions, `<seq>` folders). Other splits default to
    `val`; each dataset class's `synthetic_*` members say what exactly is written. A split the class lists among its
    `unlabelled_splits` (`splits=["test"]` for Cityscapes and ACDC) is written as images only, like the real one.
    """
    kinds = dataset_kinds()
    if kind not in kinds:
        raise ValueError(f"unknown dataset kind {kind!r}; one of {tuple(kinds)}")
    cls, variant = kinds[kind]
    root = Path(root)
    splits = tuple(splits or cls.synthetic_splits) if cls.has_splits else cls.synthetic_splits
    for split in splits:
        labelled = not cls.is_unlabelled_split(split)
        for domain, layout in cls.synthetic_layouts(split, **variant).items():
            stems = cls.synthetic_stems(split, domain, num_images)
            _write(root, domain, layout, stems, size, seed, cls.palette_labels, labelled)
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
        write_dataset(kind, root / dataset_kinds()[kind][0].default_dir, num_images, size, seed)
    return root
