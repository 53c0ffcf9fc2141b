"""Cityscapes (source/target): `leftImg8bit/<split>/<city>/*_leftImg8bit.png` + `gtFine/...` (SPEC §6.1)."""

from __future__ import annotations

from pathlib import Path

import albumentations as A

from src.data.datasets.base import Layout, LayoutDataset
from src.data.labels import LABEL_IDS, TRAIN_IDS


class CityscapesDataset(LayoutDataset):
    """Cityscapes fine annotations: `*_gtFine_labelTrainIds.png` when present, else `*_gtFine_labelIds.png`."""

    default_dir = "cityscapes"

    def __init__(self, root: str | Path, split: str = "train", transform: A.BaseCompose | None = None) -> None:
        super().__init__(root, self.layout(split), transform)

    @staticmethod
    def layout(split: str = "train") -> Layout:
        return Layout(
            f"leftImg8bit/{split}",
            "_leftImg8bit.png",
            f"gtFine/{split}",
            (("_gtFine_labelTrainIds.png", TRAIN_IDS), ("_gtFine_labelIds.png", LABEL_IDS)),
        )
