"""MiniDG domains: styles that change the appearance of a rendered scene and never its geometry or labels.

`day` is the labelled source; `night`, `fog` and `snow` are the unseen targets, each derived from the scene's
physics (light sources and surfaces, true depth, up-facing surfaces) so that geometry stays visible while
appearance shifts; `random` mixes all of them with photometric jitter for pretraining the VFMs.

Every style maps (Render, numpy Generator) -> float32 RGB (H, W, 3) in [0, 1] and reads `render.rgb`, so styles
chain (`random` runs snow -> fog -> night on top of each other). `stylize` seeds them reproducibly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import cv2
import numpy as np

from src.minidg.render import Render, value_noise

TARGET_STYLES: tuple[str, ...] = ("night", "fog", "snow")


def _albedo(render: Render) -> np.ndarray:
    """Surface reflectance implied by the current RGB (so styles compose); the sky has none."""
    albedo = render.rgb / np.maximum(render.irradiance[..., None], 0.05)
    return np.where(render.sky[..., None], 0.0, np.clip(albedo, 0, 1))


def _sky_gradient(render: Render, horizon: np.ndarray, zenith: np.ndarray) -> np.ndarray:
    t = np.clip(render.ray_up / 0.45, 0, 1)[..., None] ** 0.8
    return horizon * (1 - t) + zenith * t


def _noise(rgb: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    return rgb + rng.normal(0, sigma, rgb.shape)


def _finish(rgb: np.ndarray) -> np.ndarray:
    return np.clip(rgb, 0, 1).astype(np.float32)


def haze(rgb: np.ndarray, depth: np.ndarray, beta: float, airlight: np.ndarray | float) -> np.ndarray:
    """Koschmieder's law, I = J·e^(−βd) + A·(1 − e^(−βd)): farther pixels fade into the airlight A."""
    transmission = np.exp(-beta * depth)[..., None]
    return rgb * transmission + np.asarray(airlight, np.float32) * (1 - transmission)


def day(render: Render, rng: np.random.Generator) -> np.ndarray:
    """The source domain: the render with slight sensor noise."""
    return _finish(_noise(render.rgb, rng, 0.01))


def night(render: Render, rng: np.random.Generator) -> np.ndarray:
    """Dim ambient light (≈0.3 of day) and a glowing sky gradient, lit by street lamps, own headlights and emitters.

    The prototype's near-black night (×0.12–0.25, black sky) left day-trained visual features nothing to work with;
    here surfaces keep a third of their light and nearby geometry is lit, so the domain is hard but learnable.
    """
    albedo, points, normal = _albedo(render), render.points, render.normal
    cast = (
        np.array([1.15, 0.9, 0.6])
        if rng.random() < 0.4
        else np.array([rng.uniform(0.75, 0.95), rng.uniform(0.8, 1.0), rng.uniform(1.0, 1.25)])
    )
    light = rng.uniform(0.15, 0.27) * cast * np.ones_like(albedo)
    lamp_colour = np.array([1.0, 0.85, 0.6]) if rng.random() < 0.6 else np.array([1.0, 0.7, 0.35])
    for lamp in render.lamps:  # point lights with inverse-square falloff
        to_lamp = lamp - points
        dist = np.linalg.norm(to_lamp, axis=-1, keepdims=True)
        facing = np.clip((normal * to_lamp).sum(-1, keepdims=True) / np.maximum(dist, 1e-3), 0, 1)
        light += rng.uniform(0.6, 1.2) * facing / (1 + (dist / 4.0) ** 2) * lamp_colour
    rel = points - (render.camera_position + np.array([0.0, -0.8, 0.5]))  # own headlights: a forward cone
    ahead = np.maximum(rel[..., 2], 0)
    cone = np.exp(-((rel[..., 0] / (0.45 * ahead + 0.8)) ** 2)) * np.exp(-((np.maximum(rel[..., 1], 0) / 1.5) ** 2))
    beam = rng.uniform(0.4, 0.9) * cone * (rel[..., 2] > 0) / (1 + (ahead / 12) ** 2)
    light += beam[..., None] * np.array([1.0, 0.97, 0.9])
    out = albedo**1.1 * light
    sky = _sky_gradient(render, np.array([0.16, 0.13, 0.11]) * rng.uniform(0.8, 1.4), np.array([0.01, 0.015, 0.04]))
    out = np.where(render.sky[..., None], sky, out)
    emission = render.emission * rng.uniform(0.7, 1.1)
    sigma = 2.0 * render.rgb.shape[1] / 128
    glow = cv2.GaussianBlur(emission.astype(np.float32), (0, 0), sigma)
    out = out + emission + 0.8 * glow
    out = 0.9 * out + 0.1 * out.mean()
    return _finish(_noise(out, rng, rng.uniform(0.015, 0.03)))


def fog(render: Render, rng: np.random.Generator, beta: float | None = None) -> np.ndarray:
    """Homogeneous fog from the true depth (Koschmieder), grey airlight; β defaults to U(0.05, 0.11) per metre."""
    beta = rng.uniform(0.05, 0.11) if beta is None else beta
    airlight = rng.uniform(0.65, 0.9) * np.array([1.0, 1.0, rng.uniform(1.0, 1.05)])
    return _finish(_noise(haze(render.rgb, render.depth, beta, airlight), rng, 0.01))


def snow(render: Render, rng: np.random.Generator) -> np.ndarray:
    """Snow cover on up-facing surfaces (with drifts), overcast light, a white sky and falling flakes."""
    up = np.clip(render.normal[..., 1], 0, 1)
    x, z = render.points[..., 0], render.points[..., 2]
    drift = value_noise(x, z, 0.4, salt=21) * 0.6 + value_noise(x, z, 2.0, salt=22) * 0.4
    cover = up**2 * np.clip(rng.uniform(0.55, 0.95) + (drift - 0.5) * 1.2, 0, 1)
    albedo = _albedo(render) * (1 - cover[..., None]) + np.array([0.9, 0.92, 0.96]) * cover[..., None]
    out = albedo * (0.55 + 0.45 * render.irradiance[..., None] / max(render.irradiance.max(), 1e-3))
    grey = rng.uniform(0.72, 0.88)
    out = np.where(render.sky[..., None], _sky_gradient(render, np.full(3, grey), np.full(3, grey - 0.1)), out)
    out = 0.75 * out + 0.25 * out.mean(-1, keepdims=True)  # washed-out colours
    h, w = out.shape[:2]
    flakes = (rng.random((h, w)) < rng.uniform(0.01, 0.04)).astype(np.float32)
    length = int(rng.integers(1, 4))
    kernel = np.zeros((2 * length + 1, 2 * length + 1), np.float32)
    kernel[:, length] = 1.0 / len(kernel)  # fall streaks
    flakes = cv2.filter2D(flakes, -1, kernel) * rng.uniform(0.6, 1.0)
    out = out * (1 - flakes[..., None]) + flakes[..., None] * 0.97
    out = cv2.GaussianBlur(out.astype(np.float32), (0, 0), 0.5)
    return _finish(_noise(0.85 * out + 0.15 * 0.8, rng, 0.01))


def random_style(render: Render, rng: np.random.Generator) -> np.ndarray:
    """Pretraining appearance: a random chain of snow/fog/night, then colour, gamma, contrast, blur and noise."""
    if rng.random() < 0.15:
        render = replace(render, rgb=snow(render, rng))
    if rng.random() < 0.4:
        render = replace(render, rgb=fog(render, rng, beta=rng.uniform(0.01, 0.15)))
    if rng.random() < 0.35:
        render = replace(render, rgb=night(render, rng))
    out = np.clip(render.rgb * rng.uniform(0.6, 1.4, 3), 0, 1) ** rng.uniform(0.6, 1.6)
    mean = out.mean()
    out = (out - mean) * rng.uniform(0.5, 1.3) + mean + rng.uniform(-0.15, 0.15)
    if rng.random() < 0.3:
        out = cv2.GaussianBlur(out.astype(np.float32), (0, 0), rng.uniform(0.3, 1.2))
    return _finish(_noise(out, rng, rng.uniform(0, 0.05)))


STYLES: dict[str, Callable[[Render, np.random.Generator], np.ndarray]] = {
    "day": day,
    "night": night,
    "fog": fog,
    "snow": snow,
    "random": random_style,
}
_STYLE_KEYS = {name: i for i, name in enumerate(STYLES)}


def stylize(render: Render, style: str, seed: int | Sequence[int]) -> np.ndarray:
    """Apply `style` with its own random stream derived from (seed, style), so every domain is reproducible."""
    entropy = [*np.atleast_1d(seed).tolist(), _STYLE_KEYS[style]]
    return STYLES[style](render, np.random.default_rng(entropy))


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)
