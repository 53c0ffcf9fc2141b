"""ACDC (target): `rgb_anon/<condition>/<split>/<seq>/*_rgb_anon.png` + `gt/...` (SPEC §6.1)."""

from __future__ import annotations

from pathlib import Path

import albumentations as A

from src.data.datasets.base import Layout, LayoutDataset
from src.data.labels import LABEL_IDS, TRAIN_IDS

CONDITIONS = ("fog", "night", "rain", "snow")


class ACDCDataset(LayoutDataset):
    """One ACDC condition; labels `*_gt_labelTrainIds.png` (else `*_gt_labelIds.png`). The protocol uses `val`."""

    default_dir = "acdc"

    def __init__(
        self,
        root: str | Path,
        split: str = "val",
        transform: A.BaseCompose | None = None,
        *,
        condition: str,
    ) -> None:
        super().__init__(root, self.layout(split, condition), transform)
        self.condition = condition

    @staticmethod
    def layout(split: str, condition: str) -> Layout:
        if condition not in CONDITIONS:
            raise ValueError(f"ACDC condition must be one of {CONDITIONS}, got {condition!r}")
        return Layout(
            f"rgb_anon/{condition}/{split}",
            "_rgb_anon.png",
            f"gt/{condition}/{split}",
            (("_gt_labelTrainIds.png", TRAIN_IDS), ("_gt_labelIds.png", LABEL_IDS)),
        )
