"""ACDC (target): `rgb_anon/<condition>/<split>/<seq>/*_rgb_anon.png` + `gt/...` (docs/method.md §6.1)."""

from __future__ import annotations

from pathlib import Path

import albumentations as A

from src.data.datasets.base import Layout, LayoutDataset, OfficialSplit
from src.data.labels import LABEL_IDS, TRAIN_IDS

_VAL_SIZES = {"fog": 100, "night": 106, "rain": 100, "snow": 100}
_TEST_SIZE = 500  # per condition, without public labels (scored by the ACDC server)
CONDITIONS = tuple(_VAL_SIZES)
_SYNTHETIC_TEST_SEQ = 500  # generated test sequences: 500 + 100 * condition, so names are unique (as in ACDC)


class ACDCDataset(LayoutDataset):
    """One ACDC condition; labels `*_gt_labelTrainIds.png` (else `*_gt_labelIds.png`). The protocol uses `val`;
    the `test` split (500 images per condition, no public labels) is read with `labelled=False`."""

    key = "acdc"
    default_dir = "acdc"
    official_splits = tuple(
        OfficialSplit(f"{c}/val", n, {"split": "val", "condition": c}) for c, n in _VAL_SIZES.items()
    )
    unlabelled_splits = tuple(
        OfficialSplit(f"{c}/test", _TEST_SIZE, {"split": "test", "condition": c}) for c in CONDITIONS
    )

    def __init__(
        self,
        root: str | Path,
        split: str = "val",
        transform: A.BaseCompose | None = None,
        *,
        condition: str,
        labelled: bool = True,
    ) -> None:
        super().__init__(root, self.layout(split, condition), transform, labelled=labelled)
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

    @classmethod
    def synthetic_stems(cls, split: str, domain: str, count: int) -> list[str]:
        """The test split's sequences are the condition's own (`GOPR0500`… for fog, `GOPR0600`… for night, …): a
        test image's name is unique over all conditions, as in ACDC, which the flat server format relies on."""
        if not cls.is_unlabelled_split(split):
            return super().synthetic_stems(split, domain, count)
        first = _SYNTHETIC_TEST_SEQ + 100 * CONDITIONS.index(domain)
        return [f"GOPR{first + i // 2:04d}/GOPR{first + i // 2:04d}_frame_{i:06d}" for i in range(count)]
