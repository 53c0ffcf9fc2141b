"""Generated street-like scenes: the pixels of a class have that class's colour, so labels are learnable.

`make_sample` is the one generator used both by the in-memory `SyntheticDataset` (tests, benchmarks, no disk)
and by `src.data.synthetic`, which writes the same scenes in the real on-disk layouts. A per-domain style (dark
for night, hazy for fog, ...) gives the domain-generalisation smoke test an actual domain shift.
"""

from __future__ import annotations

import zlib

import albumentations as A
import numpy as np

from src.data.datasets.base import SegmentationDataset
from src.data.labels import IGNORE_INDEX, PALETTE

# gain, haze (blend towards light grey), RGB tint, pixel-noise std
DOMAIN_STYLES: dict[str, tuple[float, float, tuple[float, float, float], float]] = {
    "gta5": (1.0, 0.0, (1.05, 1.0, 0.9), 6.0),
    "cityscapes": (0.9, 0.0, (1.0, 1.0, 1.0), 8.0),
    "bdd100k": (0.8, 0.05, (1.0, 1.0, 1.05), 10.0),
    "mapillary": (1.0, 0.05, (1.0, 1.0, 1.0), 8.0),
    "fog": (0.9, 0.5, (1.0, 1.0, 1.0), 6.0),
    "night": (0.35, 0.0, (0.9, 0.9, 1.1), 10.0),
    "rain": (0.7, 0.15, (0.9, 0.95, 1.1), 14.0),
    "snow": (1.0, 0.3, (1.0, 1.0, 1.05), 10.0),
}

_ROAD, _SIDEWALK, _SKY = 0, 1, 10
_SKYLINE = np.array([2, 3, 4, 8])  # building, wall, fence, vegetation
_OBJECTS = np.array([5, 6, 7, 9, 11, 12, 13, 14, 15, 16, 17, 18])
_COLOURS = np.vstack([PALETTE, np.zeros((1, 3), np.uint8)]).astype(np.float32)  # last row: ignore


def stable_seed(*parts: int | str) -> list[int]:
    """Seed material for `np.random.default_rng` that is stable across runs (unlike `hash` of a str)."""
    return [p if isinstance(p, int) else zlib.crc32(p.encode()) for p in parts]


def make_sample(rng: np.random.Generator, size: tuple[int, int], domain: str) -> tuple[np.ndarray, np.ndarray]:
    """One (RGB uint8 (H, W, 3), train-ID uint8 (H, W)) scene of `size` = (W, H): sky, skyline, road, objects."""
    width, height = size
    ys, xs = np.arange(height)[:, None], np.arange(width)[None, :]
    horizon = int(rng.uniform(0.35, 0.6) * height)
    label = np.full((height, width), _ROAD, np.uint8)
    label[:horizon] = _SKY

    n_blocks = int(rng.integers(2, 6))
    block = np.searchsorted(np.sort(rng.integers(0, width, n_blocks - 1)), xs[0], side="right")
    top = horizon - rng.uniform(0.1, 0.35, n_blocks)[block] * height
    skyline = (ys >= top) & (ys < horizon)
    label[skyline] = np.broadcast_to(rng.choice(_SKYLINE, n_blocks)[block], label.shape)[skyline]
    reach = (ys - horizon) * rng.uniform(0.15, 0.45)
    label[(ys >= horizon) & ((xs < reach) | (xs >= width - reach))] = _SIDEWALK

    for _ in range(int(rng.integers(2, 6))):
        cx, cy = rng.uniform(0, width), rng.uniform(horizon * 0.6, height)
        rx, ry = rng.uniform(0.04, 0.15) * width, rng.uniform(0.06, 0.25) * height
        cls = rng.choice(_OBJECTS)
        if rng.random() < 0.5:
            label[(np.abs(xs - cx) < rx) & (np.abs(ys - cy) < ry)] = cls
        else:
            label[((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1] = cls
    if rng.random() < 0.3:
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        label[y0 : y0 + height // 8, x0 : x0 + width // 8] = IGNORE_INDEX

    gain, haze, tint, noise = DOMAIN_STYLES[domain]
    image = _COLOURS[np.minimum(label, len(PALETTE))]
    image = image * (0.8 + 0.4 * ys[..., None] / height) + rng.normal(0.0, noise, image.shape)
    image = image * gain * np.array(tint, np.float32)
    image = image * (1.0 - haze) + 200.0 * haze
    return np.clip(image, 0, 255).astype(np.uint8), label


class SyntheticDataset(SegmentationDataset):
    """`num_images` generated scenes of one domain, made on the fly (nothing on disk, so no root)."""

    def __init__(
        self,
        num_images: int = 8,
        size: tuple[int, int] = (128, 64),
        seed: int = 0,
        domain: str = "cityscapes",
        transform: A.BaseCompose | None = None,
    ) -> None:
        if domain not in DOMAIN_STYLES:
            raise ValueError(f"unknown synthetic domain {domain!r}; one of {sorted(DOMAIN_STYLES)}")
        super().__init__(transform)
        self.num_images = num_images
        self.size = (int(size[0]), int(size[1]))
        self.seed = seed
        self.domain = domain

    def __len__(self) -> int:
        return self.num_images

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return make_sample(np.random.default_rng(stable_seed(self.seed, self.domain, index)), self.size, self.domain)

    def name(self, index: int) -> str:
        return f"{self.domain}/{index:05d}"
