"""BDD100K (target): `images/10k/<split>/*.jpg` + `labels/sem_seg/masks/<split>/*.png` train IDs (SPEC §6.1)."""

from __future__ import annotations

from pathlib import Path

import albumentations as A

from src.data.datasets.base import Layout, LayoutDataset
from src.data.labels import TRAIN_IDS


class BDD100KDataset(LayoutDataset):
    """The BDD100K 10k semantic-segmentation subset; its masks are already train IDs."""

    default_dir = "bdd100k"

    def __init__(self, root: str | Path, split: str = "val", transform: A.BaseCompose | None = None) -> None:
        super().__init__(root, self.layout(split), transform)

    @staticmethod
    def layout(split: str = "val") -> Layout:
        return Layout(f"images/10k/{split}", ".jpg", f"labels/sem_seg/masks/{split}", ((".png", TRAIN_IDS),))
