"""The training/test pipelines against the docs/method.md §6.3/§6.4 definitions."""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import pytest
import torch

from src.data.datasets import SyntheticDataset
from src.data.transforms import (
    DEFAULT_RATIOS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    CatMaxRatioCrop,
    PhotoMetricDistortion,
    RandomShortEdgeResize,
    build_test_transform,
    build_train_transform,
    keep_ratio_size,
    short_edge_choices,
    short_edge_size,
)

EXPECTED_SHORT_EDGES = (256, 307, 358, 409, 460, 512, 563, 614, 665, 716, 768, 819, 870, 921, 972, 1024)


def _scene(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return SyntheticDataset(size=(width, height), seed=seed).load(0)


def _denormalise(image: torch.Tensor) -> np.ndarray:
    mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
    return image.permute(1, 2, 0).numpy() * std + mean


def test_short_edge_choices_are_spec_values() -> None:
    assert short_edge_choices(512, DEFAULT_RATIOS) == EXPECTED_SHORT_EDGES
    assert short_edge_choices(540, DEFAULT_RATIOS) == tuple(int(540 * k * 0.1) for k in range(5, 21))
    assert short_edge_choices(1024, DEFAULT_RATIOS)[-1] == 2048


@pytest.mark.parametrize(
    ("hw", "short_edge", "expected"),
    [
        ((1052, 1914), 512, (512, 932)),  # GTA5: 512·1914/1052 = 931.54
        ((1052, 1914), 1024, (1024, 1863)),
        ((1024, 2048), 1024, (1024, 2048)),  # long edge exactly at the cap
        ((500, 2000), 1024, (512, 2048)),  # 4096 long -> capped to 2048
        ((2000, 1000), 512, (1024, 512)),  # portrait
        ((720, 1280), 307, (307, 546)),  # 545.78 -> 546
    ],
)
def test_short_edge_size(hw: tuple[int, int], short_edge: int, expected: tuple[int, int]) -> None:
    assert short_edge_size(*hw, short_edge, 2048) == expected


def test_random_short_edge_resize_uses_nearest_for_labels() -> None:
    image, label = _scene(64, 96)
    resize = A.Compose([RandomShortEdgeResize(short_edge_choices(64, DEFAULT_RATIOS), max_long_edge=160)], seed=1)
    sizes = set()
    for _ in range(20):
        out = resize(image=image, mask=label)
        assert out["image"].shape[:2] == out["mask"].shape
        assert set(np.unique(out["mask"])) <= set(np.unique(label))
        sizes.add(out["mask"].shape)
    allowed = {short_edge_size(64, 96, s, 160) for s in short_edge_choices(64, DEFAULT_RATIOS)}
    assert sizes <= allowed and len(sizes) > 3


@pytest.mark.parametrize(
    ("hw", "scale", "expected"),
    [
        ((1024, 2048), (1024, 512), (512, 1024)),  # Cityscapes
        ((1080, 1920), (960, 540), (540, 960)),  # ACDC
        ((720, 1280), (1280, 720), (720, 1280)),  # BDD100K unchanged
        ((768, 1024), (1024, 512), (512, 683)),  # Mapillary 2048x1536 halved
        ((1536, 2048), (2048, 1024), (1024, 1365)),  # 1024-crop variant scale
    ],
)
def test_keep_ratio_size(hw: tuple[int, int], scale: tuple[int, int], expected: tuple[int, int]) -> None:
    assert keep_ratio_size(*hw, scale) == expected


def test_test_transform_resizes_image_only() -> None:
    image, label = _scene(108, 192)
    out = build_test_transform((96, 54))(image=image, mask=label)
    assert out["image"].shape == (3, 54, 96) and out["image"].dtype == torch.float32
    np.testing.assert_array_equal(np.asarray(out["mask"]), label)


def test_cat_max_ratio_rule() -> None:
    crop = CatMaxRatioCrop(cat_max_ratio=0.75)
    row = np.array([0] * 7 + [1] * 3, np.uint8)
    assert crop.accepts(row)  # 70 % < 75 %
    assert not crop.accepts(np.array([0] * 8 + [1] * 2, np.uint8))  # 80 %
    assert not crop.accepts(np.zeros(10, np.uint8))  # one class
    assert crop.accepts(np.array([255] * 50 + [0] * 6 + [1] * 4, np.uint8))  # ignore pixels do not count
    assert not crop.accepts(np.array([255] * 9 + [0], np.uint8))


def _stripe_label() -> np.ndarray:
    """Class 0 everywhere except a thin stripe of class 1: most 32x32 windows hold one class only."""
    label = np.zeros((64, 256), np.uint8)
    label[:, 200:212] = 1
    return label


def test_cat_max_ratio_crop_accepts_when_it_can() -> None:
    label = _stripe_label()
    image = np.zeros((*label.shape, 3), np.uint8)
    crop = CatMaxRatioCrop(32, 32, cat_max_ratio=0.75)
    compose = A.Compose([crop], seed=0)
    accepted = 0
    for _ in range(200):
        out = compose(image=image, mask=label)
        assert out["mask"].shape == (32, 32)
        accepted += crop.accepts(out["mask"])
    # one window in ~10 is acceptable, so ~65 % of calls find one within 10 checks (random crop: ~10 %)
    assert accepted > 100


_BAD = [(0, 32, x, x + 32) for x in range(0, 160, 10)]  # class 0 only
_GOOD = (0, 32, 190, 222)  # 10 of 32 columns are class 1


@pytest.mark.parametrize(
    ("scripted", "expected_window", "expected_draws"),
    [
        ([_BAD[0], _BAD[1], _GOOD, _BAD[2]], _GOOD, 3),
        (_BAD[:11], _BAD[10], 11),  # mmseg: 10 rejected checks, then one more draw kept unchecked
    ],
)
def test_cat_max_ratio_crop_redraws_then_keeps_last_draw(
    monkeypatch: pytest.MonkeyPatch, scripted: list, expected_window: tuple, expected_draws: int
) -> None:
    label = _stripe_label()
    crop = CatMaxRatioCrop(32, 32, cat_max_ratio=0.75, max_attempts=10)
    draws, calls = iter(scripted), []
    monkeypatch.setattr(crop, "draw_window", lambda h, w: calls.append((h, w)) or next(draws))
    params = crop.get_params_dependent_on_data({"shape": label.shape}, {"mask": label})
    assert params["window"] == expected_window
    assert len(calls) == expected_draws


def test_crop_keeps_whole_extent_when_smaller() -> None:
    image, label = _scene(40, 100)
    out = A.Compose([CatMaxRatioCrop(64, 64)], seed=0)(image=image, mask=label)
    assert out["mask"].shape == (40, 64)


def test_photometric_params_in_range() -> None:
    distortion = A.Compose([PhotoMetricDistortion()], seed=0).transforms[0]
    draws = [distortion.get_params() for _ in range(2000)]
    for key, low, high in [("brightness", -32, 32), ("contrast", 0.5, 1.5), ("saturation", 0.5, 1.5)]:
        values = [d[key] for d in draws if d[key] is not None]
        assert 850 < len(values) < 1150 and low <= min(values) and max(values) <= high
    hues = [d["hue"] for d in draws if d["hue"] is not None]
    assert set(hues) == set(range(-18, 18))
    assert 850 < sum(d["contrast_first"] for d in draws) < 1150


def test_brightness_only_changes_pixels_by_at_most_32() -> None:
    image, _ = _scene(64, 96)
    distortion = PhotoMetricDistortion()
    for beta in (-32.0, -5.5, 17.3, 32.0):
        out = distortion.apply(image, brightness=beta)
        assert np.abs(out.astype(int) - image.astype(int)).max() <= 32
        np.testing.assert_array_equal(out, np.clip(image.astype(np.float32) + beta, 0, 255).astype(np.uint8))


def _mmseg_reference(bgr: np.ndarray, b: float, c: float, s: float, h: int, contrast_first: bool) -> np.ndarray:
    """mmseg PhotoMetricDistortion on a BGR image with all four ops applied (docs/method.md §6.3 step 5)."""

    def convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
        return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    img = convert(bgr, beta=b)
    if contrast_first:
        img = convert(img, alpha=c)
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
    hsv[:, :, 1] = convert(hsv[:, :, 1], alpha=s)
    img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
    hsv[:, :, 0] = (hsv[:, :, 0].astype(int) + h) % 180
    img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if not contrast_first:
        img = convert(img, alpha=c)
    return img


@pytest.mark.parametrize("contrast_first", [True, False])
def test_photometric_matches_mmseg_on_bgr(contrast_first: bool) -> None:
    rgb, _ = _scene(64, 96, seed=3)
    params = {"brightness": 20.5, "contrast": 1.3, "saturation": 0.7, "hue": -11}
    out = PhotoMetricDistortion().apply(rgb, contrast_first=contrast_first, **params)
    expected = _mmseg_reference(rgb[..., ::-1].copy(), 20.5, 1.3, 0.7, -11, contrast_first)[..., ::-1]
    np.testing.assert_array_equal(out, expected)


def test_hue_shift_moves_opencv_hue_by_k() -> None:
    rgb = np.full((4, 4, 3), (200, 60, 60), np.uint8)
    hue = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[0, 0, 0]
    out = PhotoMetricDistortion().apply(rgb, hue=10)
    assert abs(int(cv2.cvtColor(out, cv2.COLOR_RGB2HSV)[0, 0, 0]) - (int(hue) + 10) % 180) <= 1


def test_train_pipeline_output_and_label_values() -> None:
    image, label = _scene(120, 200)
    transform = build_train_transform(crop_size=64, base_size=64, max_long_edge=256, seed=0)
    for _ in range(10):
        out = transform(image=image, mask=label)
        assert out["image"].shape == (3, 64, 64) and out["image"].dtype == torch.float32
        assert out["mask"].shape == (64, 64)
        assert set(np.unique(out["mask"].numpy())) <= set(np.unique(label)) | {255}


def test_padding_is_ignore_and_zero() -> None:
    image, label = _scene(32, 48)
    label[:] = 3
    transform = build_train_transform(crop_size=64, base_size=32, ratios=(1.0,), photometric=False, seed=0)
    out = transform(image=image, mask=label)
    mask, img = out["mask"].numpy(), out["image"].numpy()
    assert (mask[:32, :48] == 3).all()
    assert (mask[32:] == 255).all() and (mask[:, 48:] == 255).all()
    assert (img[:, 32:] == 0).all() and (img[:, :, 48:] == 0).all()


def test_flip_moves_image_and_label_together() -> None:
    image, label = _scene(32, 48)
    transform = build_train_transform(
        crop_size=64, base_size=32, ratios=(1.0,), flip_prob=1.0, photometric=False, seed=0
    )
    out = transform(image=image, mask=label)
    np.testing.assert_array_equal(out["mask"].numpy()[:32, :48], label[:, ::-1])
    np.testing.assert_allclose(_denormalise(out["image"])[:32, :48], image[:, ::-1], atol=1e-3)


def test_seeded_pipelines_reproduce() -> None:
    image, label = _scene(120, 200)
    first, second, other = (build_train_transform(crop_size=64, base_size=64, seed=s) for s in (5, 5, 6))
    a, b, c = (t(image=image, mask=label)["image"] for t in (first, second, other))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_rectangular_crop_size():
    import numpy as np

    from src.data.transforms import build_train_transform

    transform = build_train_transform(crop_size=(64, 128), base_size=64, ratios=(1.0, 1.5), max_long_edge=512, seed=0)
    rng = np.random.default_rng(0)
    for _ in range(5):
        out = transform(
            image=rng.integers(0, 255, (64, 128, 3), dtype=np.uint8),
            mask=rng.integers(0, 19, (64, 128), dtype=np.uint8),
        )
        assert tuple(out["image"].shape) == (3, 64, 128) and tuple(out["mask"].shape) == (64, 128)
