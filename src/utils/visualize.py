"""Pictures of predictions: train-ID maps in the Cityscapes palette, overlays with a legend, depth and token maps.

Every function takes and returns plain arrays (RGB uint8, (H, W) train IDs with 255 = void), so that the same code
draws the images and the video frames of ``src.predict`` and the media logged during validation.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch

from src.data.labels import CLASS_NAMES, IGNORE_INDEX, PALETTE
from src.data.transforms import IMAGENET_MEAN, IMAGENET_STD

#: legend background and text: neither is a palette colour, so a legend's colours are its swatches' and these two
LEGEND_BACKGROUND = (0, 0, 0)
LEGEND_TEXT = (255, 255, 255)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


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


def classes_present(pred: np.ndarray | torch.Tensor) -> list[int]:
    """The train IDs that occur in a prediction, in increasing order; void (255) is not a class."""
    values = np.unique(np.asarray(pred.cpu() if isinstance(pred, torch.Tensor) else pred))
    return [int(v) for v in values if v != IGNORE_INDEX and v < len(PALETTE)]


def blend(image: np.ndarray, pred: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image with each non-void pixel mixed with its class colour, ``(1 - alpha)·image + alpha·colour``.

    Void pixels (255) are left exactly as they are, so an overlay shows where the model did not decide.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must lie in [0, 1]")
    pred = np.asarray(pred)
    colours = colorize(pred).numpy().astype(np.float32)
    mixed = np.rint((1.0 - alpha) * image.astype(np.float32) + alpha * colours).astype(np.uint8)
    return np.where((pred != IGNORE_INDEX)[..., None], mixed, image)


def _legend_layout(height: int) -> tuple[int, float, int, int]:
    """(row height, font scale, text thickness, rows per column) for a legend ``height`` pixels tall."""
    row = int(np.clip(height // 12, 12, 32))
    scale = 0.6 * row / 22.0  # HERSHEY_SIMPLEX is about 22 px tall at scale 1
    return row, scale, max(1, row // 16), max(1, height // row)


def legend(classes: Sequence[int], height: int, slots: int | None = None) -> np.ndarray:
    """A (height, w, 3) strip listing ``classes``: a swatch of the class colour and the class name per row.

    Rows fill columns top to bottom. The strip is as wide as ``slots`` entries need (default: ``len(classes)``);
    a video passes the number of classes so that every frame's strip has the same width. The text is drawn in one
    colour without anti-aliasing, so the strip's only colours are the swatches', :data:`LEGEND_BACKGROUND` and
    :data:`LEGEND_TEXT`.
    """
    classes = list(classes)
    slots = max(len(classes), slots or 0, 1)
    row, scale, thickness, rows = _legend_layout(height)
    names = CLASS_NAMES if slots > len(classes) else [CLASS_NAMES[c] for c in classes] or [""]
    text_w = max(cv2.getTextSize(name, _FONT, scale, thickness)[0][0] for name in names)
    pad = max(2, row // 6)
    column = pad + (row - 2 * pad) + pad + text_w + 2 * pad
    width = column * math.ceil(slots / rows)
    strip = np.empty((height, width, 3), np.uint8)
    strip[:] = LEGEND_BACKGROUND
    text = np.zeros((height, width), np.uint8)
    for i, c in enumerate(classes):
        x, y = (i // rows) * column + pad, (i % rows) * row
        swatch = row - 2 * pad
        strip[y + pad : y + pad + swatch, x : x + swatch] = PALETTE[c]
        baseline = y + row // 2 + int(11 * scale)
        cv2.putText(text, CLASS_NAMES[c], (x + swatch + pad, baseline), _FONT, scale, 255, thickness, cv2.LINE_8)
    # OpenCV 5 anti-aliases text whatever the line type: its greys could be palette colours (building, pole)
    strip[text >= 128] = LEGEND_TEXT
    return strip


def overlay(
    image: np.ndarray, pred: np.ndarray | torch.Tensor, alpha: float = 0.5, slots: int | None = None
) -> np.ndarray:
    """:func:`blend` of the prediction over the image, with the :func:`legend` of the classes present to its right.

    The left ``image.shape[1]`` columns are the blended image, pixel for pixel; the legend never covers it.
    """
    pred = np.asarray(pred.cpu() if isinstance(pred, torch.Tensor) else pred)
    strip = legend(classes_present(pred), image.shape[0], slots)
    return np.concatenate([blend(image, pred, alpha), strip], axis=1)


def depth_to_rgb(depth: np.ndarray | torch.Tensor, size: tuple[int, int] | None = None) -> np.ndarray:
    """Relative depth (H, W) -> an RGB picture (inferno colour map, near = bright), resized to ``size`` = (h, w)."""
    d = np.asarray(depth.float().cpu() if isinstance(depth, torch.Tensor) else depth, dtype=np.float32)
    d = (d - d.min()) / max(float(d.max() - d.min()), 1e-6)
    d = (d * 255).astype(np.uint8)
    if size is not None and d.shape != tuple(size):
        d = cv2.resize(d, size[::-1], interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(cv2.applyColorMap(d, cv2.COLORMAP_INFERNO)[..., ::-1])


def token_palette(n: int) -> np.ndarray:
    """(n, 3) uint8 colours, one per token, well apart (golden-ratio hues, three brightness levels); fixed for n."""
    colours = []
    for i in range(n):
        hue = (i * 0.618033988749895) % 1.0
        saturation, value = (0.85, 0.95) if i % 3 == 0 else (0.6, 0.8) if i % 3 == 1 else (0.95, 0.6)
        colours.append([round(255 * c) for c in colorsys.hsv_to_rgb(hue, saturation, value)])
    return np.asarray(colours, dtype=np.uint8).reshape(n, 3)


def colorize_tokens(tokens: np.ndarray | torch.Tensor, num_tokens: int) -> np.ndarray:
    """(H, W) token indices (the most attended token per pixel) -> (H, W, 3) RGB in :func:`token_palette`."""
    tokens = np.asarray(tokens.cpu() if isinstance(tokens, torch.Tensor) else tokens)
    return token_palette(num_tokens)[tokens]
