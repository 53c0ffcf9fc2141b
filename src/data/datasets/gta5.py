"""GTA5 (source): `images/*.png` with Cityscapes label-ID PNGs `labels/*.png` (docs/method.md §6.1)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import albumentations as A

from src.data.datasets.base import Layout, LayoutDataset, OfficialSplit
from src.data.labels import LABEL_IDS, TRAIN_IDS


class GTA5Dataset(LayoutDataset):
    """All 24,966 GTA5 frames, as the DG protocol trains on (no split).

    A label is read from `labels/<name>_labelTrainIds.png` when `scripts/prepare_gta5.py` wrote it, otherwise
    from the raw palette PNG `labels/<name>.png` through the label-ID table; both give the same train IDs, the
    converted file only saves the lookup.
    """

    key = "gta5"
    default_dir = "gta"
    official_splits = (OfficialSplit("all", 24_966),)
    has_splits = False
    synthetic_splits = ("all",)
    palette_labels = True

    def __init__(self, root: str | Path, transform: A.BaseCompose | None = None) -> None:
        super().__init__(root, self.layout(), transform)

    @staticmethod
    def layout() -> Layout:
        return Layout("images", ".png", "labels", (("_labelTrainIds.png", TRAIN_IDS), (".png", LABEL_IDS)))

    @classmethod
    def synthetic_layouts(cls, split: str) -> dict[str, Layout]:
        """Raw palette labels only: the converted ones are what `scripts/prepare_gta5.py` makes."""
        layout = cls.layout()
        raw = tuple((suffix, encoding) for suffix, encoding in layout.labels if encoding is LABEL_IDS)
        return {cls.key: replace(layout, labels=raw)}

    @classmethod
    def synthetic_stem(cls, split: str, index: int) -> str:
        return f"{index:05d}"
