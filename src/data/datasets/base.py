"""Common base of the on-disk datasets: scan a layout, pair images with labels, decode, map, transform.

A dataset is fully described by a `Layout`: where the images are, and where their labels are in one or more raw
encodings (in order of preference). The label of `<image_dir>/<rel><image_suffix>` is
`<label_dir>/<rel><label_suffix>`, so pairing is a path substitution; directories are scanned recursively.

Each `LayoutDataset` subclass is also the one home of its dataset's other facts: its folder under the data root,
its official splits with their sizes (what the layout checker in `src.data.checks` verifies) and the file stems
the generated-tree writer in `src.data.synthetic` uses to imitate its naming.
"""

from __future__ import annotations

import os
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import albumentations as A
import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from src.data.labels import IGNORE_INDEX, LabelEncoding
from src.data.transforms import build_test_transform

_MAX_LISTED = 5
#: per-file label warnings of one dataset (in one process) before they are summarised
_MAX_FILE_WARNINGS = 100


class DataWarning(UserWarning):
    """A data problem training goes on with but should not be silent about (bad label values, all-ignore labels,
    label files without an image)."""


@dataclass(frozen=True)
class Layout:
    """Relative locations and suffixes of one split of a dataset; `labels` = (suffix, encoding) by preference."""

    image_dir: str
    image_suffix: str
    label_dir: str
    labels: tuple[tuple[str, LabelEncoding], ...]

    def describe(self) -> str:
        """The expected relative paths, for error messages and the layout checker."""
        label_globs = " or ".join(f"{self.label_dir}/**/*{suffix}" for suffix, _ in self.labels)
        return f"images {self.image_dir}/**/*{self.image_suffix} with labels {label_globs}"


@dataclass(frozen=True)
class OfficialSplit:
    """One split of a dataset as the protocols read it, and its official number of (image, label) pairs.

    `name` is how reports call it (`val`, `fog/val`, `val (half)`); `kwargs` are the constructor arguments besides
    `root` that select it. An optional split (`required=False`) is only reported when absent; `hint` says how to
    make a missing one.
    """

    name: str
    size: int
    kwargs: Mapping[str, str] = field(default_factory=dict)
    required: bool = True
    hint: str = ""


class Sample(NamedTuple):
    """One pair; `encoding` is the raw encoding its label file was found in, `name` its path stem in the layout.

    In an unlabelled split (`labelled=False`) `label` and `encoding` are None."""

    image: Path
    label: Path | None
    encoding: LabelEncoding | None
    name: str


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 (H, W, 3); OpenCV because it decodes PNG/JPEG faster than Pillow."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise OSError(f"cannot read image {path} (missing, truncated or not an image)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_raw_label(path: Path) -> np.ndarray:
    """The label PNG's stored values (H, W); Pillow, because OpenCV would expand palette PNGs (GTA5) to colours."""
    try:
        with Image.open(path) as image:
            raw = np.asarray(image)
    except (OSError, ValueError) as error:
        raise OSError(f"cannot read label {path}: {error}") from error
    if raw.ndim != 2:
        raise ValueError(f"label {path} has shape {raw.shape}; expected a single-channel index PNG")
    return raw


class DecodeCache:
    """Decoded image and label files kept in memory, for datasets small enough to hold decoded (MiniDG: 100 MB).

    ``read(path, reader)`` returns a fresh copy of ``reader(path)``: the first read of a file decodes it and keeps the
    array; later reads copy the kept array, so a caller (an augmentation working in place) can never change what
    the next read returns, and every read gives exactly the pixels decoding the file would. An entry is keyed by
    the path and the reader and is only used while the file's size and modification time are those it was decoded
    from. Arrays are kept until ``limit_bytes`` is reached; later files are decoded on every read, as without the
    cache. One instance (`DECODE_CACHE`) serves the process: datasets made again for the same files (another
    dataloader, a run forked from a process that already read them) find them decoded.
    """

    def __init__(self, limit_bytes: int = 4 << 30) -> None:
        self.limit_bytes = limit_bytes
        self.nbytes = 0
        self._entries: dict[tuple[str, str], tuple[int, int, np.ndarray]] = {}
        self._full_warned = False

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0
        self._full_warned = False

    def read(self, path: Path, reader: Callable[[Path], np.ndarray]) -> np.ndarray:
        """``reader(path)``, decoded once while the file is unchanged and copied from memory afterwards."""
        try:
            stat = os.stat(path)
        except OSError:  # missing or unreadable: the reader raises its own error with the fix
            return reader(path)
        key = (str(path), getattr(reader, "__qualname__", repr(reader)))
        entry = self._entries.get(key)
        if entry is not None and entry[:2] == (stat.st_size, stat.st_mtime_ns):
            return entry[2].copy()
        array = reader(path)
        if entry is not None:  # the file changed since it was decoded
            self.nbytes -= entry[2].nbytes
            del self._entries[key]
        if self.nbytes + array.nbytes <= self.limit_bytes:
            kept = array.copy()
            kept.flags.writeable = False
            self._entries[key] = (stat.st_size, stat.st_mtime_ns, kept)
            self.nbytes += kept.nbytes
        elif not self._full_warned:
            self._full_warned = True
            warnings.warn(
                f"the decoded-file cache is full ({self.nbytes / 2**20:.0f} MiB of {self.limit_bytes / 2**20:.0f}): "
                f"{path} and later files are decoded on every read. The cache is for small datasets; set "
                "data.cache_decoded=false for this one",
                DataWarning,
                stacklevel=3,
            )
        return array


#: the process's decoded-file cache, read by datasets with ``cache_decoded`` set (``data.cache_decoded=true``)
DECODE_CACHE = DecodeCache()


def _read_directly(path: Path, reader: Callable[[Path], np.ndarray]) -> np.ndarray:
    return reader(path)


class SegmentationDataset(Dataset, ABC):
    """Items are dicts of a transformed image, its train-ID label and a name; subclasses provide `load`.

    `transform` is an albumentations pipeline called as `transform(image=rgb_uint8, mask=train_ids_uint8)`;
    the default only normalises (no resize). A random (training) pipeline is reseeded per sample by
    `src.data.sampler.SeededDataset`, so its draws do not depend on the DataLoader's workers.
    """

    def __init__(self, transform: A.BaseCompose | None = None) -> None:
        self.transform = transform if transform is not None else build_test_transform(scale=None)

    @abstractmethod
    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Decoded RGB uint8 image (H, W, 3) and uint8 train-ID label (H, W) of one sample, before any transform."""

    @abstractmethod
    def name(self, index: int) -> str:
        """A name unique within the dataset (used for saved predictions)."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, label = self.load(index)
        out = self.transform(image=image, mask=label)
        return {"image": out["image"], "label": torch.as_tensor(out["mask"]).long(), "name": self.name(index)}


class LayoutDataset(SegmentationDataset):
    """(image, label) pairs of one `Layout` under `root`, scanned at construction so errors surface early.

    A subclass describes its dataset with class-level facts, read by the layout checker and the generated-tree
    writer. A subclass with a `key` registers itself in `LayoutDataset.registry` (= `src.data.datasets.DATASETS`)
    when it is defined, so a dataset added outside this package (docs/extending.md) is checked and generated too:

    - `key`: the dataset's name in checks and generated-data kinds (`gta5`, `cityscapes`, ...);
    - `default_dir`: its folder under the data root (docs/method.md §6.1), e.g. `gta` for GTA5;
    - `official_splits`: the splits the protocols read, with their official sizes (the layout-check entries);
    - `layout(...)`: a static method giving the `Layout` of one split (its arguments are the constructor's);
    - `synthetic_kinds()`, `synthetic_splits`, `synthetic_layouts(split, **variant)`, `synthetic_stem(split, i)`
      (`synthetic_stems(split, domain, n)` where a domain needs its own names), `palette_labels`: what the writer
      in `src.data.synthetic` generates in the dataset's real naming;
    - `unlabelled_splits`: the splits that ship without labels (the test-server splits), with their official image
      counts; they are read with `labelled=False` (images only), `src.submit` exports predictions for them and the
      writer generates their images only.

    `labelled=False` lists the images of a split without looking for labels (a test split); each item's label is
    then all ignore (255) at the image's size, so the test pipeline and batching stay the evaluator's while nothing
    can be scored. For a labelled split (the default) an image without its label is an error.
    """

    registry: ClassVar[dict[str, type[LayoutDataset]]] = {}
    """Every subclass with a `key`, by key, in the order they were defined."""
    key: ClassVar[str] = ""
    default_dir: ClassVar[str] = ""
    official_splits: ClassVar[tuple[OfficialSplit, ...]] = ()
    has_splits: ClassVar[bool] = True
    """False for a dataset read whole (GTA5): the writer then ignores requested splits."""
    synthetic_splits: ClassVar[tuple[str, ...]] = ("val",)
    """Splits the writer generates when none are asked for."""
    palette_labels: ClassVar[bool] = False
    """Whether the raw label PNGs ship as palette images (GTA5), which the writer then imitates."""
    unlabelled_splits: ClassVar[tuple[OfficialSplit, ...]] = ()
    """Splits without labels (test-server splits) and their official image counts; `kwargs` select one, with
    `labelled=False`."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "key" in cls.__dict__:
            other = LayoutDataset.registry.get(cls.key)
            if other is not None and other.__qualname__ != cls.__qualname__:
                raise ValueError(f"dataset key {cls.key!r} of {cls.__qualname__} is taken by {other.__qualname__}")
            LayoutDataset.registry[cls.key] = cls

    @staticmethod
    def layout(*args: Any, **kwargs: Any) -> Layout:
        """The `Layout` of one split; each subclass takes its constructor's split arguments (`split`, ...)."""
        raise NotImplementedError("a LayoutDataset subclass defines layout(); see docs/extending.md §2")

    @classmethod
    def synthetic_kinds(cls) -> dict[str, dict[str, str]]:
        """Generated-data kind -> `layout` keyword arguments of that variant; one kind named `key` by default."""
        return {cls.key: {}}

    @classmethod
    def synthetic_layouts(cls, split: str, **variant: str) -> dict[str, Layout]:
        """Generator domain (the style of `make_sample`) -> layout the writer fills with every label it lists."""
        return {cls.key: cls.layout(split, **variant)}

    @classmethod
    def synthetic_stem(cls, split: str, index: int) -> str:
        """Relative path without suffix of generated sample `index` of `split`, in the dataset's real naming."""
        raise NotImplementedError(
            f"{cls.__name__} defines no synthetic_stem(), so src.data.synthetic cannot generate it "
            "(docs/extending.md §2)"
        )

    @classmethod
    def synthetic_stems(cls, split: str, domain: str, count: int) -> list[str]:
        """The stems of one generated domain of `split`: `synthetic_stem(split, i)` for i < count, the same in
        every domain unless a class needs otherwise."""
        return [cls.synthetic_stem(split, i) for i in range(count)]

    @classmethod
    def is_unlabelled_split(cls, split: str) -> bool:
        """Whether `split` ships without labels (one of `unlabelled_splits`)."""
        return any(s.kwargs.get("split") == split for s in cls.unlabelled_splits)

    def __init__(
        self, root: str | Path, layout: Layout, transform: A.BaseCompose | None = None, labelled: bool = True
    ) -> None:
        super().__init__(transform)
        self.root = Path(root)
        self.layout = layout
        self.labelled = bool(labelled)
        self.samples = self._scan()
        self._checked: set[int] = set()  # labels already checked (and warned about) in this process
        self._warned = 0
        #: read the files through the process's `DECODE_CACHE` (decoded once, then copied from memory; the same
        #: pixels); set by `DGDataModule(cache_decoded=True)`, off by default (large datasets do not fit in memory)
        self.cache_decoded = False

    def _scan(self) -> list[Sample]:
        layout = self.layout
        image_root, label_root = self.root / layout.image_dir, self.root / layout.label_dir
        if self.labelled:
            expected = f"expected {layout.describe()} under {self.root}"
        else:
            expected = f"expected images {layout.image_dir}/**/*{layout.image_suffix} (unlabelled) under {self.root}"
        if not image_root.is_dir():
            raise FileNotFoundError(f"{type(self).__name__}: {image_root} does not exist; {expected}")
        images = sorted(image_root.rglob(f"*{layout.image_suffix}"))
        if not images:
            raise FileNotFoundError(f"{type(self).__name__}: no *{layout.image_suffix} under {image_root}; {expected}")
        if not self.labelled:  # a test split: the images alone, whatever label files lie beside them
            suffix = len(layout.image_suffix)
            return [Sample(p, None, None, p.relative_to(image_root).as_posix()[:-suffix]) for p in images]
        present = {p for suffix, _ in layout.labels for p in label_root.rglob(f"*{suffix}")}
        samples, unlabelled = [], []
        for image in images:
            rel = image.relative_to(image_root).as_posix()[: -len(layout.image_suffix)]
            candidates = ((label_root / f"{rel}{suffix}", encoding) for suffix, encoding in layout.labels)
            found = next(((path, encoding) for path, encoding in candidates if path in present), None)
            if found is not None:
                samples.append(Sample(image, *found, rel))
            else:
                unlabelled.append(image.relative_to(self.root).as_posix())
        if unlabelled:
            examples = ", ".join(unlabelled[:_MAX_LISTED])
            raise FileNotFoundError(
                f"{type(self).__name__}: {len(unlabelled)} of {len(images)} images under {image_root} have no label "
                f"(e.g. {examples}); {expected}"
            )
        self._warn_orphans(present, {sample.name for sample in samples}, label_root, expected)
        return samples

    def _warn_orphans(self, labels: set[Path], stems: set[str], label_root: Path, expected: str) -> None:
        """Warn about label files that no image pairs with: they are silently unused (a wrong image folder or
        suffix, images deleted or not yet copied)."""
        suffixes = [suffix for suffix, _ in self.layout.labels]
        orphans = []
        for path in labels:
            rel = path.relative_to(label_root).as_posix()
            if not any(rel.endswith(s) and rel[: -len(s)] in stems for s in suffixes):
                orphans.append(path.relative_to(self.root).as_posix())
        if orphans:
            orphans.sort()
            warnings.warn(
                f"{type(self).__name__}: {len(orphans)} label files under {label_root} have no image and are not used "
                f"(e.g. {', '.join(orphans[:_MAX_LISTED])}); {expected}",
                DataWarning,
                stacklevel=3,
            )

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        sample = self.samples[index]
        read = DECODE_CACHE.read if self.cache_decoded else _read_directly
        image = read(sample.image, read_image)
        if sample.label is None:  # unlabelled split: all ignore, at the image's size
            return image, np.full(image.shape[:2], IGNORE_INDEX, np.uint8)
        raw = read(sample.label, read_raw_label)
        label = sample.encoding.to_train_ids(raw)
        if image.shape[:2] != label.shape:
            raise ValueError(f"image {sample.image} is {image.shape[:2]} but its label {sample.label} is {label.shape}")
        if index not in self._checked:
            self._checked.add(index)
            self._check_label(sample, raw, label)
        return image, label

    def _check_label(self, sample: Sample, raw: np.ndarray, label: np.ndarray) -> None:
        """Warn, once per file (and process), about label values outside the encoding and all-ignore labels."""
        known = sample.encoding.known
        if raw.dtype == np.uint8:
            bad = ~known[raw]
        else:
            in_range = (raw >= 0) & (raw < known.size)
            bad = ~in_range
            bad[in_range] = ~known[raw[in_range]]
        count = int(bad.sum())
        problems = []
        if count:
            values = np.unique(raw[bad])
            shown = ", ".join(str(int(v)) for v in values[:10]) + (" …" if values.size > 10 else "")
            problems.append(
                f"{count:,} of {raw.size:,} pixels have values outside the {sample.encoding.name} encoding ({shown}); "
                f"they are read as ignore ({IGNORE_INDEX})"
            )
        if not (label != IGNORE_INDEX).any():
            problems.append(f"every pixel is ignore ({IGNORE_INDEX}): the image adds nothing to training or metrics")
        if not problems:
            return
        self._warned += 1
        if self._warned > _MAX_FILE_WARNINGS:
            return
        more = (
            f" (the last of {_MAX_FILE_WARNINGS} such warnings for {self.root}: python scripts/check_data_layout.py "
            "<data root> --full lists every file)"
            if self._warned == _MAX_FILE_WARNINGS
            else ""
        )
        warnings.warn(f"label {sample.label}: " + "; ".join(problems) + more, DataWarning, stacklevel=3)

    def name(self, index: int) -> str:
        return self.samples[index].name
