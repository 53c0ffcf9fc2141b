"""Colourise train-ID maps in the Cityscapes palette and undo the input normalisation, for pictures."""

from __future__ import annotations

import numpy as np
import torch

from src.data.labels import IGNORE_INDEX, PALETTE
from src.data.transforms import IMAGENET_MEAN, IMAGENET_STD


def colorize(label: torch.Tensor | np.ndarray) -> torch.Tensor:
    """(H, W) train IDs -> (H, W, 3) uint8 RGB; ignore (255) is black."""
    label = torch.as_tensor(np.asarray(label.cpu()) if isinstance(label, torch.Tensor) else label).long()
    lut = torch.zeros(256, 3, dtype=torch.uint8)
    lut[: len(PALETTE)] = torch.as_tensor(np.asarray(PALETTE, dtype=np.uint8))
    lut[IGNORE_INDEX] = 0
    return lut[label.clamp(0, 255)]


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) normalised RGB -> (3, H, W) uint8 RGB."""
    mean = torch.tensor(IMAGENET_MEAN, device=image.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=image.device).view(3, 1, 1)
    return (image.float() * std + mean).clamp(0, 255).round().byte()
