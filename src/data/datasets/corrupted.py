"""A corrupted copy of a dataset split as a target domain (Cityscapes-C): images from the corrupted tree, labels the
source's own files (docs/evaluation.md).

`scripts/make_corruptions.py` writes corruption `c` at severity `s` of a split to `<root>/<c>/<s>/<image_dir>/...` in
the source's layout (`src.data.corruptions`); `CorruptedDataset` pairs those images with the label files of the
source split, so the labels cannot differ from the source's. `corruption_targets` makes one such domain per
corruption and severity, named `<corruption>_<severity>`, for `conf/data/targets/citys_c.yaml`.

The class has no `key`: it is not a dataset of its own for the layout checker or the generated-data writer.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import albumentations as A

from src.data.corruptions import (
    CORRUPTIONS,
    MANIFEST,
    SEVERITIES,
    check_selection,
    corrupted_root,
    default_layout,
    domain_name,
    manifest,
    source_layout,
)
from src.data.datasets import DATASETS
from src.data.datasets.base import Layout, LayoutDataset

_MAX_LISTED = 5


def _names(image_root: Path, suffix: str) -> set[str]:
    return {p.relative_to(image_root).as_posix()[: -len(suffix)] for p in image_root.rglob(f"*{suffix}")}


class CorruptedDataset(LayoutDataset):
    """`corruption` at `severity` of one split of a dataset: images under `<root>/<corruption>/<severity>`, labels
    from `source_root`, in the layout of `dataset` (a key of `src.data.datasets.DATASETS`) and `layout` (the
    arguments of its `layout()`, default `{"split": "val"}`, `{}` for GTA5). Names are the source's
    (`frankfurt/frankfurt_...`).

    The corrupted tree must hold every image of the source split: a partly generated one (an interrupted run) is
    refused with the command that completes it, never evaluated on a subset.
    """

    def __init__(
        self,
        root: str | Path,
        source_root: str | Path,
        corruption: str,
        severity: int,
        dataset: str = "cityscapes",
        layout: Mapping[str, Any] | None = None,
        transform: A.BaseCompose | None = None,
    ) -> None:
        check_selection([corruption], [severity])
        layout = default_layout(dataset, layout)
        split = source_layout(dataset, layout)
        self.corruption, self.severity = corruption, int(severity)
        self.corrupted_root, self.source_root = Path(root), Path(source_root)
        image_root = corrupted_root(root, corruption, severity) / split.image_dir
        label_root = self.source_root / split.label_dir
        self._check_manifest(dataset, layout)
        self._check_complete(image_root, self.source_root / split.image_dir, split.image_suffix, dataset, layout)
        # one root above both trees, so that the base class pairs corrupted images with the source's label files
        image_root, label_root = Path(os.path.abspath(image_root)), Path(os.path.abspath(label_root))
        common = Path(os.path.commonpath([image_root, label_root]))
        paired = Layout(
            image_root.relative_to(common).as_posix(),
            split.image_suffix,
            label_root.relative_to(common).as_posix(),
            split.labels,
        )
        super().__init__(common, paired, transform)

    def _check_manifest(self, dataset: str, layout: dict[str, Any]) -> None:
        record = manifest(self.corrupted_root)
        if record is None:
            return
        if record.get("dataset") != dataset or layout not in record.get("layouts", []):
            raise ValueError(
                f"{self.corrupted_root / MANIFEST} holds corruptions of {record.get('dataset')} "
                f"{record.get('layouts')}, not of {dataset} {layout}: point root at the corruptions of this split"
            )

    def _check_complete(
        self, image_root: Path, source_images: Path, suffix: str, dataset: str, layout: dict[str, Any]
    ) -> None:
        make = (
            f"python scripts/make_corruptions.py {self.source_root} {self.corrupted_root} --dataset {dataset} "
            + " ".join(f"--layout {k}={v}" for k, v in layout.items())
            + f" --corruptions {self.corruption} --severities {self.severity}"
        )
        if not image_root.is_dir():
            raise FileNotFoundError(
                f"{type(self).__name__}: no {self.corruption} severity {self.severity} images: {image_root} does not "
                f"exist; make them with\n  {make}"
            )
        if not source_images.is_dir():
            raise FileNotFoundError(f"{type(self).__name__}: the source images {source_images} do not exist")
        missing = sorted(_names(source_images, suffix) - _names(image_root, suffix))
        if missing:
            examples = ", ".join(missing[:_MAX_LISTED])
            raise FileNotFoundError(
                f"{type(self).__name__}: {image_root} lacks {len(missing)} of the source's images (e.g. {examples}): "
                f"the generation did not finish; complete it with\n  {make}"
            )


def corruption_domains(corruptions: Sequence[str] = CORRUPTIONS, severities: Sequence[int] = SEVERITIES) -> list[str]:
    """`<corruption>_<severity>` for each corruption and severity, corruption-major (`gaussian_noise_1`, ...)."""
    corruptions, severities = check_selection(corruptions, severities)
    return [domain_name(c, s) for c in corruptions for s in severities]


def corruption_targets(
    root: str,
    source_root: str,
    corruptions: Sequence[str] = CORRUPTIONS,
    severities: Sequence[int] = SEVERITIES,
    dataset: str = "cityscapes",
    layout: Mapping[str, Any] | None = None,
    transform: A.BaseCompose | None = None,
    clean: bool = True,
) -> dict[str, Callable[[], LayoutDataset]]:
    """Target domains for `DGDataModule`: `clean` (the source split itself, when `clean`) and one
    `CorruptedDataset` factory per corruption and severity, named `<corruption>_<severity>`."""
    corruptions, severities = check_selection(corruptions, severities)
    layout = default_layout(dataset, layout)
    source_layout(dataset, layout)  # an unknown dataset or split argument fails here, not in setup
    targets: dict[str, Callable[[], LayoutDataset]] = {}
    if clean:
        targets["clean"] = partial(DATASETS[dataset], source_root, transform=transform, **layout)
    for c in corruptions:
        for s in severities:
            targets[domain_name(c, s)] = partial(
                CorruptedDataset, root, source_root, c, s, dataset=dataset, layout=layout, transform=transform
            )
    return targets
