"""Train and test pipelines (docs/method.md §6.3, §6.4) as Hydra-callable factories, and their reseeding.

Inputs are RGB uint8 images and uint8 train-ID labels; outputs are a normalised float (3, h, w) image tensor and
a uint8 label tensor. albumentations 2.x seeds every transform of a `Compose` with the same seed, which makes
their draws correlated; `reseed` gives all transforms one shared generator instead (`src.data.sampler.SeededDataset`
also uses it to reseed the training pipeline before every sample).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
from albumentations.pytorch import ToTensorV2

from src.data.labels import IGNORE_INDEX
from src.data.transforms.geometric import CatMaxRatioCrop, KeepRatioResize, RandomShortEdgeResize
from src.data.transforms.photometric import PhotoMetricDistortion

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
DEFAULT_RATIOS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0)


def short_edge_choices(base_size: int, ratios: Sequence[float]) -> tuple[int, ...]:
    """⌊base·ratio⌋ per ratio, as mmseg's int(base·k·0.1); rounding first absorbs float error (540·0.7)."""
    return tuple(math.floor(round(base_size * r, 6)) for r in ratios)


def reseed(transform: A.BaseCompose, seed: int) -> None:
    """Drive every transform of `transform` from one generator pair seeded with `seed`."""
    transform.set_random_state(np.random.default_rng(seed), random.Random(seed))


def _normalise() -> A.Normalize:
    return A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD, max_pixel_value=1.0)


def build_train_transform(
    crop_size: int | Sequence[int] = 512,
    base_size: int = 512,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    max_long_edge: int = 2048,
    cat_max_ratio: float = 0.75,
    flip_prob: float = 0.5,
    photometric: bool = True,
    seed: int | None = None,
) -> A.Compose:
    """docs/method.md §6.3: short-edge choice, cat-ratio crop, flip, photometric distortion, normalise, pad, tensor.

    `crop_size` is the side of a square crop (the paper's 512) or (height, width). `flip_prob` and `photometric`
    let tests isolate steps; the configs keep their defaults. Padding fills the label with `IGNORE_INDEX`.
    """
    crop_h, crop_w = (crop_size, crop_size) if isinstance(crop_size, int) else (int(crop_size[0]), int(crop_size[1]))
    transforms: list[A.BasicTransform] = [
        RandomShortEdgeResize(short_edge_choices(base_size, ratios), max_long_edge=max_long_edge),
        CatMaxRatioCrop(crop_h, crop_w, cat_max_ratio=cat_max_ratio),
        A.HorizontalFlip(p=flip_prob),
    ]
    if photometric:
        transforms.append(PhotoMetricDistortion())
    transforms += [
        _normalise(),
        A.PadIfNeeded(
            min_height=crop_h,
            min_width=crop_w,
            position="top_left",
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            fill_mask=IGNORE_INDEX,
        ),
        ToTensorV2(),
    ]
    compose = A.Compose(transforms)
    reseed(compose, seed if seed is not None else random.SystemRandom().randrange(2**32))
    return compose


def build_test_transform(scale: tuple[int, int] | None = (1024, 512)) -> A.Compose:
    """Method §6.4: keep-ratio resize of the image only into `scale` = (w_max, h_max) (None: no resize), normalise.

    The label passes through at its original resolution.
    """
    transforms: list[A.BasicTransform] = [] if scale is None else [KeepRatioResize(tuple(scale))]
    return A.Compose([*transforms, _normalise(), ToTensorV2()])
