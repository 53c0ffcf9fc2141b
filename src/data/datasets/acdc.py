"""ACDC (target): `rgb_anon/<condition>/<split>/<seq>/*_rgb_anon.png` + `gt/...` (docs/method.md §6.1)."""

from __future__ import annotations

from pathlib import Path

import albumentations as A

from src.data.datasets.base import Layout, LayoutDataset, OfficialSplit
from src.data.labels import LABEL_IDS, TRAIN_IDS

_VAL_SIZES = {"fog": 100, "night": 106, "rain": 100, "snow": 100}
CONDITIONS = tuple(_VAL_SIZES)


class ACDCDataset(LayoutDataset):
    """One ACDC condition; labels `*_gt_labelTrainIds.png` (else `*_gt_labelIds.png`). The protocol uses `val`."""

    key = "acdc"
    default_dir = "acdc"
    official_splits = tuple(
        OfficialSplit(f"{c}/val", n, {"split": "val", "condition": c}) for c, n in _VAL_SIZES.items()
    )

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

    @classmethod
    def synthetic_layouts(cls, split: str) -> dict[str, Layout]:
        """Every condition, each in its own style."""
        return {c: cls.layout(split, c) for c in CONDITIONS}

    @classmethod
    def synthetic_stem(cls, split: str, index: int) -> str:
        """`GOPR<seq>/GOPR<seq>_frame_<index>`, two frames per recording sequence."""
        return f"GOPR{index // 2:04d}/GOPR{index // 2:04d}_frame_{index:06d}"
