"""Training and test pipelines (docs/method.md §6.3, §6.4) built from albumentations and our own transforms."""

from src.data.transforms.geometric import (
    CatMaxRatioCrop,
    KeepRatioResize,
    RandomShortEdgeResize,
    keep_ratio_size,
    short_edge_size,
)
from src.data.transforms.photometric import PhotoMetricDistortion
from src.data.transforms.pipelines import (
    DEFAULT_RATIOS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_test_transform,
    build_train_transform,
    reseed,
    short_edge_choices,
)

__all__ = [
    "DEFAULT_RATIOS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CatMaxRatioCrop",
    "KeepRatioResize",
    "PhotoMetricDistortion",
    "RandomShortEdgeResize",
    "build_test_transform",
    "build_train_transform",
    "keep_ratio_size",
    "reseed",
    "short_edge_choices",
    "short_edge_size",
]
