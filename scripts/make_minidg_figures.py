"""The MiniDG pictures of README.md and docs/minidg.md, regenerated deterministically (no network, about 15 s).

    python scripts/make_minidg_figures.py                              # all three, from the shipped trained runs
    python scripts/make_minidg_figures.py --only samples               # one of them (this one needs no run)
    python scripts/make_minidg_figures.py --runs logs/minidg_sweep     # runs of your own (<method>_seed0 folders)

Writes into ``--out`` (docs/images):

- ``minidg_domains.png``: one MiniDG test scene in its four domains (day, the labelled source; night, fog and snow,
  the unseen targets) beside its ground truth, with a legend of its classes;
- ``minidg_samples.png``: ``--samples`` test scenes in the four domains, each with its ground truth;
- ``minidg_prediction.png``: the scene of ``minidg_domains.png`` in each domain: image | ground truth | REIN |
  DepthForge | the depth VFM's relative depth (near = bright).

Images and labels are ``src.minidg.dataset.test_scene``'s, the evaluated test images bit for bit. Predictions are
``src.predict``'s (:meth:`~src.predict.Predictor.segment`: MiniDG's test pipeline, then
``SegmentationModule.forward`` with the run's slide windows, the argmax at the image's size), by the trained runs
``<runs>/rein`` and ``<runs>/depthforge`` loaded with :func:`src.minidg.analysis.load_run`. The depth map is the
depth VFM's own output (``Segmenter.depth_map``) on the input its encoder gets inside DepthForge: the image
resized to the visual token grid (112×224 for a 64×128 image), resized back to the image.

MiniDG images are 64×128 pixels: every panel is enlarged ``--zoom`` times by pixel repetition, so label and
prediction panels keep exact palette colours. The PNGs are written with fixed settings: the same arguments on the
same machine and library versions give byte-identical files.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from src.data.transforms.pipelines import build_test_transform  # noqa: E402
from src.minidg.analysis import load_run  # noqa: E402
from src.minidg.dataset import test_scene  # noqa: E402
from src.minidg.render import RENDERED_CLASSES  # noqa: E402
from src.models.module import SegmentationModule  # noqa: E402
from src.predict import Predictor  # noqa: E402
from src.utils.visualize import PanelGrid, classes_present, colorize, depth_to_rgb, panel_grid  # noqa: E402

DOMAINS = ("day", "night", "fog", "snow")
DOMAIN_TITLES = {"day": "day (source)", "night": "night", "fog": "fog", "snow": "snow"}
#: the compared methods, in column order, and their names in the pictures
METHODS = {"rein": "REIN", "depthforge": "DepthForge"}
FIGURES = ("domains", "samples", "prediction")
DEFAULT_RUNS = ROOT / "assets" / "minidg" / "runs"


def run_dir(runs: Path, method: str, seed: int = 0) -> Path:
    """The training run of ``method`` under ``runs``: ``<runs>/<method>`` (the shipped layout) or
    ``<runs>/<method>_seed<seed>`` (``scripts/minidg_sweep.py``'s)."""
    candidates = [runs / method, runs / f"{method}_seed{seed}"]
    for path in candidates:
        if path.is_dir():
            return path
    raise FileNotFoundError(
        f"no {method} run under --runs {runs} (looked for {', '.join(str(c) for c in candidates)})\n"
        f"  fix: --runs <folder holding {method}/ or {method}_seed{seed}/>, or train one: "
        f"python -m src.train experiment=minidg ablation={method} hydra.run.dir={candidates[0]}"
    )


def load_models(runs: Path, seed: int = 0) -> dict[str, SegmentationModule]:
    """Every method of :data:`METHODS`, loaded from its run under ``runs`` in eval mode, in column order (every run
    is found before any is loaded, so a missing one fails at once)."""
    dirs = {method: run_dir(runs, method, seed) for method in METHODS}
    return {method: load_run(path).eval() for method, path in dirs.items()}


def predictor(module: SegmentationModule) -> Predictor:
    """``src.predict``'s predictor for a MiniDG run: the targets' test pipeline (normalise, no resize:
    conf/data/targets/minidg.yaml) on the CPU, in full precision as ``trainer=cpu`` evaluates."""
    return Predictor(module, build_test_transform(scale=None), torch.device("cpu"))


@torch.no_grad()
def relative_depth(module: SegmentationModule, batch: torch.Tensor) -> torch.Tensor:
    """The depth VFM's relative depth (B, H, W) of normalised images (B, 3, H, W), near = large: ``depth_map``, the
    whole Depth Anything (encoder and DPT head) on the input the depth encoder gets inside the segmenter (the image
    resized to the visual token grid: MiniDG's depth VFM was trained at that size, and on the bare 64×128 image its
    patch-14 encoder would see a 4×9 grid), resized back to the image."""
    rel = module.segmenter.depth_map(batch)
    if rel is None:
        raise ValueError(f"{type(module.segmenter.token_adapter).__name__} has no depth VFM to draw the depth of")
    return rel.float()


def domains_figure(seed: int, scene: int, zoom: int) -> PanelGrid:
    """One test scene in its four domains and its ground truth, with a legend of the classes in the label.

    The top row is what training sees (the day image and its label), the bottom row the unseen targets (night, fog,
    snow: the same scene, hence the same label). Two rows keep the figure about as wide as a README column and the
    legend beside it tall enough to read. The label is panel (0, 1) of ``boxes``.
    """
    render, images = test_scene(seed, scene)
    return panel_grid(
        [[images["day"], colorize(render.label).numpy()], [images[d] for d in DOMAINS[1:]]],
        zoom=zoom,
        titles=[["day (labelled source)", "ground truth"], [f"{d} (unseen target)" for d in DOMAINS[1:]]],
        legend_classes=classes_present(render.label),
    )


def samples_figure(seed: int, scenes: Sequence[int], zoom: int) -> PanelGrid:
    """A row per test scene: the four domains and the ground truth; the legend lists every rendered class."""
    rows = []
    for index in scenes:
        render, images = test_scene(seed, index)
        rows.append([images[d] for d in DOMAINS] + [colorize(render.label).numpy()])
    return panel_grid(
        rows,
        zoom=zoom,
        column_titles=[DOMAIN_TITLES[d] for d in DOMAINS] + ["ground truth"],
        row_titles=[f"scene {i}" for i in scenes],
        legend_classes=RENDERED_CLASSES,
    )


def prediction_figure(models: dict[str, SegmentationModule], seed: int, scene: int, zoom: int) -> PanelGrid:
    """A row per domain: image | ground truth | each method's prediction | DepthForge's depth VFM's depth."""
    render, images = test_scene(seed, scene)
    batch_images = [images[d] for d in DOMAINS]
    predictions = {}
    batch = None
    for method, module in models.items():
        predictions[method], batch = predictor(module).segment(batch_images)
    depth = relative_depth(models["depthforge"], batch)
    label = colorize(render.label).numpy()
    rows = [
        [images[d], label] + [colorize(predictions[method][i]).numpy() for method in models] + [depth_to_rgb(depth[i])]
        for i, d in enumerate(DOMAINS)
    ]
    predicted = {c for pred in predictions.values() for c in classes_present(pred)}
    return panel_grid(
        rows,
        zoom=zoom,
        column_titles=["image", "ground truth", *(METHODS[m] for m in models), "depth VFM (near = bright)"],
        row_titles=[DOMAIN_TITLES[d] for d in DOMAINS],
        legend_classes=sorted(set(RENDERED_CLASSES) | predicted),
    )


def write_png(path: Path, rgb: np.ndarray) -> None:
    """Write an RGB picture as a PNG at the highest compression (fixed settings: the same picture, the same bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise OSError(f"OpenCV could not encode {path} as PNG")
    path.write_bytes(data.tobytes())
    print(f"  -> {path} ({rgb.shape[1]} x {rgb.shape[0]}, {len(data) / 1024:.0f} KB)")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--runs",
        type=Path,
        default=DEFAULT_RUNS,
        help="folder holding the trained runs rein/ and depthforge/ (or rein_seed0/ and depthforge_seed0/)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--only", nargs="+", choices=FIGURES, default=list(FIGURES), help="the figures to make")
    parser.add_argument("--seed", type=int, default=0, help="MiniDG dataset seed (the benchmark's is 0)")
    parser.add_argument("--run-seed", type=int, default=0, help="training seed of <method>_seed<k> run folders")
    parser.add_argument("--scene", type=int, default=4, help="the test scene of the domains and prediction figures")
    parser.add_argument("--samples", type=int, nargs="+", default=[1, 2, 4], help="test scenes of the grid")
    parser.add_argument("--zoom", type=int, default=2, help="enlargement of the 64x128 panels (pixel repetition)")
    args = parser.parse_args(argv)
    if "domains" in args.only:
        write_png(args.out / "minidg_domains.png", domains_figure(args.seed, args.scene, args.zoom).picture)
    if "samples" in args.only:
        write_png(args.out / "minidg_samples.png", samples_figure(args.seed, args.samples, args.zoom).picture)
    if "prediction" in args.only:
        models = load_models(args.runs, args.run_seed)
        figure = prediction_figure(models, args.seed, args.scene, args.zoom)
        write_png(args.out / "minidg_prediction.png", figure.picture)


if __name__ == "__main__":
    main()
