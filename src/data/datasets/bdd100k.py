"""BDD100K (target): `images/10k/<split>/*.jpg` + `labels/sem_seg/masks/<split>/*.png` train IDs.

Layout: docs/method.md §6.1.
"""

from __future__ import annotations

from pathlib import Path

import albumentations as A

from src.data.datasets.base import Layout, LayoutDataset, OfficialSplit
from src.data.datasets.synthetic import stable_seed
from src.data.labels import TRAIN_IDS


class BDD100KDataset(LayoutDataset):
    """The BDD100K 10k semantic-segmentation subset; its masks are already train IDs."""

    key = "bdd100k"
    default_dir = "bdd100k"
    official_splits = (OfficialSplit("val", 1_000, {"split": "val"}),)

    def __init__(self, root: str | Path, split: str = "val", transform: A.BaseCompose | None = None) -> None:
        super().__init__(root, self.layout(split), transform)

    @staticmethod
    def layout(split: str = "val") -> Layout:
        return Layout(f"images/10k/{split}", ".jpg", f"labels/sem_seg/masks/{split}", ((".png", TRAIN_IDS),))

    @classmethod
    def synthetic_stem(cls, split: str, index: int) -> str:
        """`<8 hex>-<8 hex>` like BDD100K's video IDs (the first part fixed per split)."""
        return f"{stable_seed(split)[0]:08x}-{index:08x}"
