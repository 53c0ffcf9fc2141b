"""Pictures of predictions: train-ID maps in the Cityscapes palette, overlays with a legend, depth and token maps.

Every function takes and returns plain arrays (RGB uint8, (H, W) train IDs with 255 = void), so that the same code
draws the images and the video frames of ``src.predict`` and the media logged during validation.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from dataclasses import dataclass

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


#: background and title colour of :func:`panel_grid` figures (white paper, black text)
FIGURE_BACKGROUND = (255, 255, 255)
FIGURE_TEXT = (0, 0, 0)


@dataclass(frozen=True)
class PanelGrid:
    """A figure of :func:`panel_grid` and where each panel landed: ``boxes[(row, column)] = (y, x, h, w)`` of the
    enlarged panel in ``picture``, so that a test can cut a panel out and compare it with what it should show."""

    picture: np.ndarray
    boxes: dict[tuple[int, int], tuple[int, int, int, int]]


def _text_band(texts: Sequence[str], widths: Sequence[int], height: int, gap: int, scale: float) -> np.ndarray:
    """A white band of ``height`` with each text centred over its column (``widths``, ``gap`` apart)."""
    band = np.empty((height, sum(widths) + gap * (len(widths) - 1), 3), np.uint8)
    band[:] = FIGURE_BACKGROUND
    x = 0
    for text, width in zip(texts, widths):
        (w, h), _ = cv2.getTextSize(text, _FONT, scale, 1)
        org = (x + max(0, (width - w) // 2), (height + h) // 2)
        cv2.putText(band, text, org, _FONT, scale, FIGURE_TEXT, 1, cv2.LINE_AA)
        x += width + gap
    return band


def panel_grid(
    rows: Sequence[Sequence[np.ndarray]],
    *,
    zoom: int = 1,
    column_titles: Sequence[str] | None = None,
    titles: Sequence[Sequence[str]] | None = None,
    row_titles: Sequence[str] | None = None,
    legend_classes: Sequence[int] | None = None,
    gap: int = 4,
    title_scale: float = 0.5,
) -> PanelGrid:
    """RGB panels (rows × columns, uint8 (h, w, 3)) enlarged ``zoom`` times by pixel repetition, laid out on white
    with ``gap`` pixels between them, titled above each column (``column_titles``) or above each panel (``titles``,
    one list per row) and left of each row (``row_titles``), with the :func:`legend` of ``legend_classes`` on the
    right.

    Pixel repetition (nearest neighbour) keeps every panel's pixels exact: a 64×128 MiniDG image at ``zoom=3`` is
    a 192×384 block of 3×3 copies of its pixels, nothing blended in, so a label's colours stay palette colours.
    Panels of a row share a height; columns are as wide as their widest panel (a narrower one is padded white).
    """
    if zoom < 1 or not rows or not all(rows):
        raise ValueError(f"panel_grid needs at least one panel per row and zoom >= 1 (got zoom={zoom})")
    columns = max(len(r) for r in rows)
    if column_titles is not None and len(column_titles) != columns:
        raise ValueError(f"{len(column_titles)} column titles for {columns} columns")
    if row_titles is not None and len(row_titles) != len(rows):
        raise ValueError(f"{len(row_titles)} row titles for {len(rows)} rows")
    if titles is not None and [len(t) for t in titles] != [len(r) for r in rows]:
        raise ValueError(f"titles {[len(t) for t in titles]} per row for panels {[len(r) for r in rows]} per row")
    big = [[np.repeat(np.repeat(np.asarray(p, np.uint8), zoom, 0), zoom, 1) for p in row] for row in rows]
    widths = [max(row[c].shape[1] for row in big if c < len(row)) for c in range(columns)]
    heights = [max(p.shape[0] for p in row) for row in big]
    band = int(round(44 * title_scale))  # HERSHEY_SIMPLEX is about 22 px tall at scale 1: one line and a margin
    left = 0
    if row_titles is not None:
        left = max(cv2.getTextSize(t, _FONT, title_scale, 1)[0][0] for t in row_titles) + 2 * gap
    top = band if column_titles is not None else 0
    above = band if titles is not None else 0  # each row's own title band
    width = left + sum(widths) + gap * (columns - 1)
    height = top + sum(heights) + (above + gap) * len(rows) - gap
    picture = np.empty((height, width, 3), np.uint8)
    picture[:] = FIGURE_BACKGROUND
    if column_titles is not None:
        picture[:band, left:] = _text_band(column_titles, widths, band, gap, title_scale)
    boxes: dict[tuple[int, int], tuple[int, int, int, int]] = {}
    y = top
    for r, row in enumerate(big):
        if titles is not None:
            band_widths = [widths[c] for c in range(len(row))]
            picture[y : y + above, left : left + sum(band_widths) + gap * (len(row) - 1)] = _text_band(
                titles[r], band_widths, above, gap, title_scale
            )
            y += above
        if row_titles is not None:
            picture[y : y + heights[r], :left] = _text_band([row_titles[r]], [left], heights[r], 0, title_scale)
        x = left
        for c, panel in enumerate(row):
            h, w = panel.shape[:2]
            picture[y : y + h, x : x + w] = panel
            boxes[(r, c)] = (y, x, h, w)
            x += widths[c] + gap
        y += heights[r] + gap
    if legend_classes is not None:
        strip = legend(legend_classes, height - top)
        strip = np.concatenate([np.full((top, strip.shape[1], 3), FIGURE_BACKGROUND, np.uint8), strip])
        spacer = np.full((height, gap, 3), FIGURE_BACKGROUND, np.uint8)
        picture = np.concatenate([picture, spacer, strip], axis=1)
    return PanelGrid(picture, boxes)
