import cv2
import numpy as np
import pytest
import torch

from src.data.labels import IGNORE_INDEX, NUM_CLASSES, PALETTE
from src.data.transforms import build_test_transform
from src.utils.visualize import (
    LEGEND_BACKGROUND,
    LEGEND_TEXT,
    blend,
    classes_present,
    colorize,
    colorize_tokens,
    denormalize,
    depth_to_rgb,
    legend,
    overlay,
    token_palette,
)


def test_colorize_uses_the_cityscapes_palette_and_black_for_ignore():
    out = colorize(torch.tensor([[0, 255], [13, 18]]))
    assert out.dtype == torch.uint8 and out.shape == (2, 2, 3)
    assert out[0, 0].tolist() == [128, 64, 128] and out[0, 1].tolist() == [0, 0, 0]
    assert out[1, 0].tolist() == list(PALETTE[13]) and out[1, 1].tolist() == list(PALETTE[18])


def test_denormalize_inverts_the_pipeline_normalisation():
    image = np.random.default_rng(0).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    normalised = build_test_transform(scale=None)(image=image)["image"]
    back = denormalize(normalised).permute(1, 2, 0).numpy().astype(int)
    assert np.abs(back - image).max() <= 1


# --------------------------------------------------------------------------- overlays, legends, depth and token maps


def _scene() -> tuple[np.ndarray, np.ndarray]:
    """A random image and a prediction of classes 0, 2, 11 and 13 with a void block."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (96, 160, 3), dtype=np.uint8)
    pred = np.zeros((96, 160), np.uint8)
    pred[:, 40:80], pred[:, 80:120], pred[:48, 120:] = 2, 11, 13
    pred[60:80, 10:30] = IGNORE_INDEX
    return image, pred


def test_overlay_changes_the_image_exactly_where_the_prediction_is_not_void():
    image, pred = _scene()
    image[pred == 11] = PALETTE[11]  # a pixel already of its class colour would blend to itself: none here
    image[pred == 11] //= 2
    out = overlay(image, pred, alpha=0.5)
    picture, strip = out[:, : image.shape[1]], out[:, image.shape[1] :]
    changed = (picture != image).any(axis=-1)
    np.testing.assert_array_equal(changed, pred != IGNORE_INDEX)
    expected = np.rint(0.5 * image.astype(float) + 0.5 * PALETTE[np.minimum(pred, 18)]).astype(np.uint8)
    np.testing.assert_array_equal(picture[pred != IGNORE_INDEX], expected[pred != IGNORE_INDEX])
    assert strip.shape[0] == image.shape[0] and strip.shape[1] > 0
    np.testing.assert_array_equal(blend(image, pred, alpha=0.0), image)
    with pytest.raises(ValueError, match=r"alpha=1.5 must lie in \[0, 1\]"):
        blend(image, pred, alpha=1.5)


def _legend_colours(strip: np.ndarray) -> set[tuple[int, ...]]:
    colours = {tuple(int(v) for v in c) for c in np.unique(strip.reshape(-1, 3), axis=0)}
    return colours - {LEGEND_BACKGROUND, LEGEND_TEXT}


def test_the_legend_lists_exactly_the_classes_present():
    image, pred = _scene()
    assert classes_present(pred) == [0, 2, 11, 13]  # void is not a class
    strip = overlay(image, pred)[:, image.shape[1] :]
    assert _legend_colours(strip) == {tuple(int(v) for v in PALETTE[c]) for c in (0, 2, 11, 13)}
    for c in (0, 2, 11, 13):  # one swatch per class: a single solid square of its colour
        mask = (strip == PALETTE[c]).all(axis=-1).astype(np.uint8)
        count, _, stats, _ = cv2.connectedComponentsWithStats(mask)
        assert count == 2 and stats[1, cv2.CC_STAT_AREA] == stats[1, cv2.CC_STAT_WIDTH] * stats[1, cv2.CC_STAT_HEIGHT]
    assert (strip == LEGEND_TEXT).all(axis=-1).any()  # the names are written
    only_road = overlay(image, np.zeros_like(pred))[:, image.shape[1] :]
    assert _legend_colours(only_road) == {tuple(int(v) for v in PALETTE[0])}


def test_legend_with_slots_has_one_width_whatever_the_classes():
    """Video frames pass slots=NUM_CLASSES: every frame's legend is as wide, whichever classes it shows."""
    widths = {legend(c, 120, slots=NUM_CLASSES).shape for c in ([], [0], [5, 6, 7], list(range(NUM_CLASSES)))}
    assert len(widths) == 1
    full = legend(list(range(NUM_CLASSES)), 120)
    assert _legend_colours(full) == {tuple(int(v) for v in c) for c in PALETTE}
    assert legend([], 64).shape[0] == 64


def test_depth_and_token_maps():
    depth = np.tile(np.linspace(0.0, 10.0, 50, dtype=np.float32), (20, 1))
    rgb = depth_to_rgb(depth, (40, 100))
    assert rgb.shape == (40, 100, 3) and rgb.dtype == np.uint8
    brightness = rgb.astype(int).sum(-1)[0]
    assert brightness[-1] > brightness[len(brightness) // 2] > brightness[0]  # larger relative depth = brighter
    palette = token_palette(100)
    assert palette.shape == (100, 3) and len(np.unique(palette, axis=0)) == 100
    tokens = torch.tensor([[0, 1], [99, 1]])
    out = colorize_tokens(tokens, 100)
    assert out.shape == (2, 2, 3) and (out[0, 1] == out[1, 1]).all() and (out[1, 0] == palette[99]).all()
