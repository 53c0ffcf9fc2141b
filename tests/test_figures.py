"""The MiniDG pictures (scripts/make_minidg_figures.py) show what their titles claim, and are reproducible.

Each panel is cut out of the figure by the box ``panel_grid`` reports and compared with the same content computed
here without the script: the label in the Cityscapes palette, a trained run's prediction through
``SegmentationModule.forward``, and the depth VFM's depth map, which must follow the scene's true depth.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from src.data.labels import PALETTE
from src.data.transforms.pipelines import build_test_transform
from src.minidg.dataset import test_scene as render_test_scene  # not test_*: pytest would collect it
from src.utils.visualize import FIGURE_BACKGROUND, LEGEND_BACKGROUND, LEGEND_TEXT, depth_to_rgb

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "make_minidg_figures.py"
SEED, SCENE = 0, 3  # dataset seed 0's test scene 3 holds all 11 rendered classes


@pytest.fixture(scope="module")
def figures():
    spec = importlib.util.spec_from_file_location("make_minidg_figures", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def models(figures):
    """The shipped trained REIN and DepthForge runs (assets/minidg/runs), as the script loads them."""
    return figures.load_models(figures.DEFAULT_RUNS)


def _panel(grid, row: int, column: int, zoom: int) -> np.ndarray:
    """Panel (row, column) of a ``PanelGrid``, shrunk back to its pixels (it was enlarged by repetition)."""
    y, x, h, w = grid.boxes[(row, column)]
    big = grid.picture[y : y + h, x : x + w]
    small = big[::zoom, ::zoom]
    np.testing.assert_array_equal(big, np.repeat(np.repeat(small, zoom, 0), zoom, 1))  # nothing was blended in
    return small


def _colours(picture: np.ndarray) -> set[tuple[int, ...]]:
    return {tuple(int(v) for v in c) for c in np.unique(picture.reshape(-1, 3), axis=0)}


def _batch(images: list[np.ndarray]) -> torch.Tensor:
    """MiniDG's test pipeline (conf/data/targets/minidg.yaml: normalise, no resize) on uint8 RGB images."""
    transform = build_test_transform(scale=None)
    return torch.stack([transform(image=image)["image"] for image in images])


def test_domains_figure_shows_the_scene_and_its_label_in_class_colours_with_their_legend(figures):
    zoom = 2
    grid = figures.domains_figure(SEED, SCENE, zoom)
    render, images = render_test_scene(SEED, SCENE)
    label = _panel(grid, 0, 1, zoom)
    assert label.shape == (*render.label.shape, 3)
    np.testing.assert_array_equal(label, PALETTE[render.label])
    assert (render.label == 13).sum() > 20 and (label[render.label == 13] == (0, 0, 142)).all()  # the cars are blue
    np.testing.assert_array_equal(_panel(grid, 0, 0, zoom), images["day"])
    for column, domain in enumerate(("night", "fog", "snow")):
        np.testing.assert_array_equal(_panel(grid, 1, column, zoom), images[domain])
    # the legend right of the panels shows exactly the label's classes: their swatches, on black, in white text
    right = max(x + w for (_, x, _, w) in grid.boxes.values())
    legend = grid.picture[:, right:]
    swatches = _colours(legend) - {LEGEND_BACKGROUND, LEGEND_TEXT, FIGURE_BACKGROUND}
    assert swatches == {tuple(int(v) for v in PALETTE[c]) for c in np.unique(render.label)}
    assert len(swatches) == 11


def test_depth_map_of_a_minidg_scene_follows_its_true_depth(figures, models):
    render, images = render_test_scene(SEED, SCENE)
    depth = figures.relative_depth(models["depthforge"], _batch([images[d] for d in figures.DOMAINS]))
    assert depth.shape == (4, *render.label.shape)
    nearness = np.log(150.0 / render.depth)  # what the depth VFM was trained to regress, up to scale
    for d in depth.numpy():
        assert d.std() > 0.2 * d.mean()  # a map that varies, not a flat one
        assert d[-16:].mean() > d[:16].mean() + 0.2  # the road at the bottom is nearer than the top of the image
        assert np.corrcoef(d.ravel(), nearness.ravel())[0, 1] > 0.75


def test_prediction_figure_panels_are_the_runs_predictions_and_depth(figures, models):
    zoom = 1
    grid = figures.prediction_figure(models, SEED, SCENE, zoom)
    render, images = render_test_scene(SEED, SCENE)
    batch = _batch([images[d] for d in figures.DOMAINS])
    with torch.no_grad():
        predictions = {m: module(batch, out_size=render.label.shape).argmax(1).numpy() for m, module in models.items()}
    depth = figures.relative_depth(models["depthforge"], batch)
    for row, domain in enumerate(figures.DOMAINS):
        np.testing.assert_array_equal(_panel(grid, row, 0, zoom), images[domain])
        np.testing.assert_array_equal(_panel(grid, row, 1, zoom), PALETTE[render.label])
        for column, method in enumerate(figures.METHODS, start=2):
            np.testing.assert_array_equal(_panel(grid, row, column, zoom), PALETTE[predictions[method][row]])
            # trained runs: most pixels right, in every domain (a random-init model gets about 1/11 of them)
            assert (predictions[method][row] == render.label).mean() > 0.6, (method, domain)
        np.testing.assert_array_equal(_panel(grid, row, 4, zoom), depth_to_rgb(depth[row]))


def test_figures_are_byte_identical_when_made_twice(figures, tmp_path):
    made = []
    for attempt in ("a", "b"):
        figures.main(["--out", str(tmp_path / attempt), "--zoom", "1", "--samples", "0"])
        made.append({p.name: p.read_bytes() for p in sorted((tmp_path / attempt).iterdir())})
    assert sorted(made[0]) == ["minidg_domains.png", "minidg_prediction.png", "minidg_samples.png"]
    assert made[0] == made[1]


def test_a_missing_run_is_refused_with_the_command_that_makes_it(figures, tmp_path):
    (tmp_path / "rein").mkdir()
    with pytest.raises(
        FileNotFoundError, match=r"no depthforge run under --runs .*\n  fix: --runs .*ablation=depthforge"
    ):
        figures.load_models(tmp_path)
