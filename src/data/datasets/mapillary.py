"""Mapillary Vistas v1.2 (target): the halved train-ID copy, or the raw 66-class release (docs/method.md §6.1, §6.2)."""

from __future__ import annotations

from pathlib import Path

import albumentations as A

from src.data.datasets.base import Layout, LayoutDataset, OfficialSplit
from src.data.labels import MAPILLARY_V12, TRAIN_IDS

_RAW_SPLITS = {"val": "validation", "train": "training"}


class MapillaryDataset(LayoutDataset):
    """`variant="half"` reads `half/<split>_img/*.jpg` + `half/<split>_label/*.png` (train IDs, written by
    `scripts/prepare_mapillary.py`; the protocol's val set). `variant="raw"` reads the full-size release
    `validation/images/*.jpg` + `validation/v1.2/labels/*.png` through the 66-class table; it is explicit rather
    than a fallback because it changes the label resolution the metric is computed at.
    """

    key = "mapillary"
    default_dir = "mapillary"
    official_splits = (
        OfficialSplit(
            "val (half)",
            2_000,
            {"split": "val", "variant": "half"},
            hint="make it from the raw release with scripts/prepare_mapillary.py",
        ),
        OfficialSplit("val (raw v1.2, optional)", 2_000, {"split": "val", "variant": "raw"}, required=False),
    )

    def __init__(
        self,
        root: str | Path,
        split: str = "val",
        transform: A.BaseCompose | None = None,
        variant: str = "half",
    ) -> None:
        super().__init__(root, self.layout(split, variant), transform)

    @staticmethod
    def layout(split: str = "val", variant: str = "half") -> Layout:
        if variant == "half":
            return Layout(f"half/{split}_img", ".jpg", f"half/{split}_label", ((".png", TRAIN_IDS),))
        if variant == "raw":
            raw = _RAW_SPLITS[split]
            return Layout(f"{raw}/images", ".jpg", f"{raw}/v1.2/labels", ((".png", MAPILLARY_V12),))
        raise ValueError(f"Mapillary variant must be 'half' or 'raw', got {variant!r}")

    @classmethod
    def synthetic_kinds(cls) -> dict[str, dict[str, str]]:
        """`mapillary` (the halved train-ID copy) and `mapillary_raw` (the 66-class v1.2 release)."""
        return {"mapillary": {"variant": "half"}, "mapillary_raw": {"variant": "raw"}}

    @classmethod
    def synthetic_stem(cls, split: str, index: int) -> str:
        return f"{split}{index:06d}_synthetic"
