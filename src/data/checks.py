"""Validate a data root against the layouts of docs/method.md §6.1 before a long run finds out the hard way.

Each entry is one official split of one registered dataset class (`LayoutDataset.official_splits`). It is checked
by building the dataset class (the same scan training uses: missing folders, images without labels), comparing the
count with the official one, and decoding a sample of pairs (or all, `full=True`): unreadable files, image/label
size mismatches, and label values outside the encoding (they would silently become ignore pixels).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from src.data.datasets import DATASETS as _CLASSES
from src.data.datasets import LayoutDataset, read_image, read_raw_label
from src.data.labels import IGNORE_INDEX

_MAX_LISTED = 5


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


def entries() -> tuple[Entry, ...]:
    """Every official split of every registered dataset class (`LayoutDataset.official_splits`), added ones too."""
    return tuple(
        Entry(cls.key, s.name, cls.default_dir, partial(cls, **s.kwargs), s.size, s.required, s.hint)
        for cls in _CLASSES.values()
        for s in cls.official_splits
    )


ENTRIES = entries()
"""The entries of the datasets shipped with the package."""
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
            f"label values outside the mapping (read as ignore {IGNORE_INDEX}): {values} in {len(unknown)} of "
            f"{result.checked} labels, e.g. {examples}"
        )
    return result


def check_data_root(
    data_root: str | Path, datasets: tuple[str, ...] | None = None, samples: int = 20, full: bool = False
) -> list[Result]:
    """Check every entry of the chosen datasets (default: all registered) under `data_root` (`data/` holding gta,
    cityscapes, ...)."""
    return [check_entry(e, data_root, samples, full) for e in entries() if datasets is None or e.dataset in datasets]
