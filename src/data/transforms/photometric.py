"""mmseg PhotoMetricDistortion as an albumentations transform (docs/method.md §6.3 step 5).

albumentations' ColorJitter has other ranges, a random op order and float maths; this follows mmseg exactly:
brightness, contrast (first or last, chosen by a coin), saturation, hue, each gated with p = 0.5, with a clip to
[0, 255] and a cast to uint8 after every op. Saturation and hue go through OpenCV's 8-bit HSV (H in [0, 180)).
The image here is RGB, so RGB<->HSV is used; it gives the same pixels as mmseg's BGR<->HSV on the BGR image.
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import cv2
import numpy as np

# mmseg's defaults, which the protocol uses
BRIGHTNESS_DELTA = 32
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA = 18


def _convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


class PhotoMetricDistortion(A.ImageOnlyTransform):
    """Random brightness, contrast, saturation and hue on a uint8 RGB image, mmseg semantics and default ranges."""

    def __init__(self, p: float = 1.0) -> None:
        super().__init__(p=p)

    def get_params(self) -> dict[str, Any]:
        """Draw every gate and value up front; None means the op is skipped."""
        rng = self.py_random

        def gated(draw: Any) -> Any:
            return draw() if rng.random() < 0.5 else None

        brightness = gated(lambda: rng.uniform(-BRIGHTNESS_DELTA, BRIGHTNESS_DELTA))
        contrast_first = rng.random() < 0.5
        contrast = gated(lambda: rng.uniform(*CONTRAST_RANGE))
        saturation = gated(lambda: rng.uniform(*SATURATION_RANGE))
        hue = gated(lambda: rng.randint(-HUE_DELTA, HUE_DELTA - 1))
        return {
            "brightness": brightness,
            "contrast_first": contrast_first,
            "contrast": contrast,
            "saturation": saturation,
            "hue": hue,
        }

    def apply(
        self,
        img: np.ndarray,
        brightness: float | None = None,
        contrast_first: bool = True,
        contrast: float | None = None,
        saturation: float | None = None,
        hue: int | None = None,
        **params: Any,
    ) -> np.ndarray:
        if brightness is not None:
            img = _convert(img, beta=brightness)
        if contrast_first and contrast is not None:
            img = _convert(img, alpha=contrast)
        if saturation is not None:
            hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
            hsv[..., 1] = _convert(hsv[..., 1], alpha=saturation)
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        if hue is not None:
            hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
            hsv[..., 0] = (hsv[..., 0].astype(np.int32) + hue) % 180
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        if not contrast_first and contrast is not None:
            img = _convert(img, alpha=contrast)
        return img
