"""Cityscapes (source/target): `leftImg8bit/<split>/<city>/*_leftImg8bit.png` + `gtFine/...` (docs/method.md §6.1)."""

from __future__ import annotations

from pathlib import Path

import albumentations as A

from src.data.datasets.base import Layout, LayoutDataset, OfficialSplit
from src.data.labels import LABEL_IDS, TRAIN_IDS

_SYNTHETIC_CITIES = {
    "train": ("aachen", "bochum"),
    "val": ("frankfurt", "lindau", "munster"),
    "test": ("berlin", "bielefeld", "bonn"),
}


class CityscapesDataset(LayoutDataset):
    """Cityscapes fine annotations: `*_gtFine_labelTrainIds.png` when present, else `*_gtFine_labelIds.png`.

    The test split (1,525 images, scored by the Cityscapes server) is read with `labelled=False`: only its images
    are listed (its annotations are not public; any gtFine/test files beside them are ignored).
    """

    key = "cityscapes"
    default_dir = "cityscapes"
    official_splits = (
        OfficialSplit("train", 2_975, {"split": "train"}),
        OfficialSplit("val", 500, {"split": "val"}),
    )
    synthetic_splits = ("train", "val")
    unlabelled_splits = (OfficialSplit("test", 1_525, {"split": "test"}),)

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: A.BaseCompose | None = None,
        *,
        labelled: bool = True,
    ) -> None:
        super().__init__(root, self.layout(split), transform, labelled=labelled)

    @staticmethod
    def layout(split: str = "train") -> Layout:
        return Layout(
            f"leftImg8bit/{split}",
            "_leftImg8bit.png",
            f"gtFine/{split}",
            (("_gtFine_labelTrainIds.png", TRAIN_IDS), ("_gtFine_labelIds.png", LABEL_IDS)),
        )

    @classmethod
    def synthetic_stem(cls, split: str, index: int) -> str:
        """`<city>/<city>_<seq:06d>_000019`, cycling through real city names of the split (else the split's name)."""
        cities = _SYNTHETIC_CITIES.get(split, (split,))
        city = cities[index % len(cities)]
        return f"{city}/{city}_{index:06d}_000019"
