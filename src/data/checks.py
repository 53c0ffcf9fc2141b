"""Validate a data root against the layouts of SPEC §6.1 before a long run finds out the hard way.

Each entry is one split of one dataset as the protocols read it. It is checked by building the dataset class (the
same scan training uses: missing folders, images without labels), comparing the count with the official one,
and decoding a sample of pairs (or all, `full=True`): unreadable files, image/label size mismatches, and label
values outside the encoding (they would silently become ignore pixels).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from src.data.datasets import (
    ACDCDataset,
    BDD100KDataset,
    CityscapesDataset,
    GTA5Dataset,
    LayoutDataset,
    MapillaryDataset,
    read_image,
    read_raw_label,
)

_MAX_LISTED = 5
_ACDC_VAL = {"fog": 100, "night": 106, "rain": 100, "snow": 100}


@dataclass(frozen=True)
class Entry:
    """One split to check: `build(dataset_root)` makes the dataset, `required` ones fail the check when bad."""

    dataset: str
    split: str
    directory: str
    build: Callable[[Path], LayoutDataset]
    expected: int
    required: bool = True
    hint: str = ""


ENTRIES: tuple[Entry, ...] = (
    Entry("gta5", "all", GTA5Dataset.default_dir, GTA5Dataset, 24_966),
    Entry("cityscapes", "train", CityscapesDataset.default_dir, lambda r: CityscapesDataset(r, "train"), 2_975),
    Entry("cityscapes", "val", CityscapesDataset.default_dir, lambda r: CityscapesDataset(r, "val"), 500),
    Entry("bdd100k", "val", BDD100KDataset.default_dir, lambda r: BDD100KDataset(r, "val"), 1_000),
    Entry(
        "mapillary",
        "val (half)",
        MapillaryDataset.default_dir,
        lambda r: MapillaryDataset(r, "val", variant="half"),
        2_000,
        hint="make it from the raw release with scripts/prepare_mapillary.py",
    ),
    Entry(
        "mapillary",
        "val (raw v1.2, optional)",
        MapillaryDataset.default_dir,
        lambda r: MapillaryDataset(r, "val", variant="raw"),
        2_000,
        required=False,
    ),
    *(
        Entry("acdc", f"{c}/val", ACDCDataset.default_dir, lambda r, c=c: ACDCDataset(r, "val", condition=c), n)
        for c, n in _ACDC_VAL.items()
    ),
)
DATASETS = tuple(dict.fromkeys(e.dataset for e in ENTRIES))


@dataclass
class Result:
    """Outcome of one entry; `ok` is False when a required entry has errors."""

    entry: Entry
    root: Path
    found: int = 0
    checked: int = 0
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors or not self.entry.required

    def format(self) -> str:
        status = "OK" if not self.errors else ("FAIL" if self.entry.required else "absent")
        head = f"[{status:>6}] {self.entry.dataset}/{self.entry.split}: {self.found} pairs"
        head += f" (expected {self.entry.expected:,}), {self.checked} decoded  {self.root}"
        kind = "error" if self.entry.required else "note"
        return "\n".join([head, *(f"    {kind}: {e}" for e in self.errors), *(f"    {n}" for n in self.notes)])


def check_entry(entry: Entry, data_root: str | Path, samples: int = 20, full: bool = False) -> Result:
    """Scan, count and decode one entry under `data_root / entry.directory`."""
    result = Result(entry, Path(data_root) / entry.directory)
    try:
        dataset = entry.build(result.root)
    except (FileNotFoundError, ValueError) as error:
        result.errors.append(f"{error}" + (f" ({entry.hint})" if entry.hint else ""))
        return result
    result.found = len(dataset)
    if result.found != entry.expected:
        result.notes.append(f"count {result.found:,} differs from the official {entry.expected:,}")
    encodings = Counter(sample.encoding.name for sample in dataset.samples)
    result.notes.append("labels: " + ", ".join(f"{n:,} {name}" for name, n in encodings.items()))

    count = len(dataset) if full else min(samples, len(dataset))
    indices = np.unique(np.linspace(0, len(dataset) - 1, count).round().astype(int)) if count else []
    unreadable, mismatched, unknown = [], [], {}
    for index in indices:
        sample = dataset.samples[index]
        try:
            image, raw = read_image(sample.image), read_raw_label(sample.label)
        except (OSError, ValueError) as error:
            unreadable.append(str(error))
            continue
        if image.shape[:2] != raw.shape:
            mismatched.append(f"{sample.image.name} {image.shape[:2]} vs {sample.label.name} {raw.shape}")
        values = sample.encoding.unknown_values(raw)
        if values:
            unknown[sample.label] = values
    result.checked = len(indices)
    if unreadable:
        result.errors.append(f"{len(unreadable)} unreadable: " + "; ".join(unreadable[:_MAX_LISTED]))
    if mismatched:
        result.errors.append(f"{len(mismatched)} size mismatches: " + "; ".join(mismatched[:_MAX_LISTED]))
    if unknown:
        values = sorted({v for vs in unknown.values() for v in vs})
        listed = list(unknown.items())[:_MAX_LISTED]
        examples = "; ".join(f"{path.relative_to(result.root)}: {vs}" for path, vs in listed)
        result.errors.append(
            f"label values outside the mapping (read as ignore 255): {values} in {len(unknown)} of "
            f"{result.checked} labels, e.g. {examples}"
        )
    return result


def check_data_root(
    data_root: str | Path, datasets: tuple[str, ...] = DATASETS, samples: int = 20, full: bool = False
) -> list[Result]:
    """Check every entry of the chosen datasets under `data_root` (`data/` holding gta, cityscapes, ...)."""
    return [check_entry(e, data_root, samples, full) for e in ENTRIES if e.dataset in datasets]
