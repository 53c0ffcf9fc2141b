"""Resize and crop transforms that albumentations lacks, with mmseg's semantics (docs/method.md §6.3 steps 2-3, §6.4).

They are albumentations transforms so that one `A.Compose(seed=...)` drives all randomness; random draws come
from the transform's own `py_random`, never from the global RNGs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np

from src.data.labels import IGNORE_INDEX


def short_edge_size(height: int, width: int, short_edge: int, max_long_edge: int | None) -> tuple[int, int]:
    """(h, w) with the short edge at `short_edge`, shrunk so the long edge is at most `max_long_edge`.

    mmcv's ResizeShortestEdge: scale both sides, cap, then round with int(x + 0.5).
    """
    if height < width:
        new_h, new_w = float(short_edge), short_edge * width / height
    else:
        new_h, new_w = short_edge * height / width, float(short_edge)
    if max_long_edge is not None and max(new_h, new_w) > max_long_edge:
        factor = max_long_edge / max(new_h, new_w)
        new_h, new_w = new_h * factor, new_w * factor
    return int(new_h + 0.5), int(new_w + 0.5)


def keep_ratio_size(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """(h, w) after mmcv's keep-ratio rescale into `scale` = (w_max, h_max) (docs/method.md §6.4).

    factor = min(long_max / long, short_max / short), so the image fits the box in either orientation.
    """
    long_max, short_max = max(scale), min(scale)
    factor = min(long_max / max(height, width), short_max / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


class RandomShortEdgeResize(A.DualTransform):
    """mmseg RandomChoiceResize + ResizeShortestEdge: the short edge becomes one of `short_edges` (uniform).

    Bilinear for the image, nearest for the label.
    """

    def __init__(self, short_edges: Sequence[int], max_long_edge: int | None = 2048, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.short_edges = tuple(int(s) for s in short_edges)
        self.max_long_edge = max_long_edge

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        short_edge = self.py_random.choice(self.short_edges)
        return {"size": short_edge_size(height, width, short_edge, self.max_long_edge)}

    def apply(self, img: np.ndarray, size: tuple[int, int], **params: Any) -> np.ndarray:
        return cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)

    def apply_to_mask(self, mask: np.ndarray, size: tuple[int, int], **params: Any) -> np.ndarray:
        return cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)


class CatMaxRatioCrop(A.DualTransform):
    """mmseg RandomCrop with cat_max_ratio: avoid crops dominated by one class (docs/method.md §6.3 step 3).

    A window is accepted when it holds more than one non-ignore class and the most frequent one covers less than
    `cat_max_ratio` of the non-ignore pixels. As in mmseg, the first draw is checked, and after each rejection a
    new window is drawn; after `max_attempts` rejections the last (unchecked) draw is kept. A side shorter than the
    crop is kept whole (the pipeline pads afterwards).
    """

    def __init__(
        self, height: int = 512, width: int = 512, cat_max_ratio: float = 0.75, max_attempts: int = 10, p: float = 1.0
    ) -> None:
        super().__init__(p=p)
        self.height, self.width = height, width
        self.cat_max_ratio = cat_max_ratio
        self.max_attempts = max_attempts

    @property
    def targets_as_params(self) -> list[str]:
        return ["mask"]

    def draw_window(self, height: int, width: int) -> tuple[int, int, int, int]:
        """Uniform random window (y1, y2, x1, x2), clipped to the image when it is smaller than the crop."""
        y1 = self.py_random.randint(0, max(height - self.height, 0))
        x1 = self.py_random.randint(0, max(width - self.width, 0))
        return y1, min(y1 + self.height, height), x1, min(x1 + self.width, width)

    def accepts(self, label: np.ndarray) -> bool:
        """The cat_max_ratio rule on a label window (`IGNORE_INDEX` pixels do not count)."""
        values, counts = np.unique(label, return_counts=True)
        counts = counts[values != IGNORE_INDEX]
        return len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        window = self.draw_window(height, width)
        if self.cat_max_ratio < 1.0:
            mask = data["mask"]
            for _ in range(self.max_attempts):
                y1, y2, x1, x2 = window
                if self.accepts(mask[y1:y2, x1:x2]):
                    break
                window = self.draw_window(height, width)
        return {"window": window}

    def apply(self, img: np.ndarray, window: tuple[int, int, int, int], **params: Any) -> np.ndarray:
        y1, y2, x1, x2 = window
        return img[y1:y2, x1:x2]

    def apply_to_mask(self, mask: np.ndarray, window: tuple[int, int, int, int], **params: Any) -> np.ndarray:
        return self.apply(mask, window)


class KeepRatioResize(A.ImageOnlyTransform):
    """Test-time bilinear resize of the image only into `scale` = (w_max, h_max), keeping the aspect ratio
    (docs/method.md §6.4).

    Image-only because evaluation compares with the label at its original resolution.
    """

    def __init__(self, scale: tuple[int, int], p: float = 1.0) -> None:
        super().__init__(p=p)
        self.scale = (int(scale[0]), int(scale[1]))

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        height, width = keep_ratio_size(img.shape[0], img.shape[1], self.scale)
        return cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)
