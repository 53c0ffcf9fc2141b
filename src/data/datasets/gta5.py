"""GTA5 (source): `images/*.png` with Cityscapes label-ID PNGs `labels/*.png` (SPEC §6.1)."""

from __future__ import annotations

from pathlib import Path

import albumentations as A

from src.data.datasets.base import Layout, LayoutDataset
from src.data.labels import LABEL_IDS, TRAIN_IDS


class GTA5Dataset(LayoutDataset):
    """All 24,966 GTA5 frames, as the DG protocol trains on (no split).

    A label is read from `labels/<name>_labelTrainIds.png` when `scripts/prepare_gta5.py` wrote it, otherwise
    from the raw palette PNG `labels/<name>.png` through the label-ID table; both give the same train IDs, the
    converted file only saves the lookup.
    """

    default_dir = "gta"

    def __init__(self, root: str | Path, transform: A.BaseCompose | None = None) -> None:
        super().__init__(root, self.layout(), transform)

    @staticmethod
    def layout() -> Layout:
        return Layout("images", ".png", "labels", (("_labelTrainIds.png", TRAIN_IDS), (".png", LABEL_IDS)))
