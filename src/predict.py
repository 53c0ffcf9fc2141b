"""Segment a folder of images: colourised PNGs in the Cityscapes palette, optionally beside the depth map.

python -m src.predict experiment=gta2citys ckpt_path=… input_dir=photos/ output_dir=out/ with_depth=true

What is written where (decided before the model is built, so a bad layout fails at once and writes nothing):

- ``input_dir/<sub>/<name>.<ext>`` gives ``output_dir/<sub>/<name>.png``. Inputs that would give the same name
  (``a.jpg`` and ``a.png``) keep their suffix instead: ``a.jpg.png`` and ``a.png.png`` (logged).
- Inputs are never written to: a prediction that would land inside ``input_dir`` (``output_dir`` equal to it or
  inside it) is refused, since it could overwrite a photo of the same name and would be read as an input by the
  next run. Pick an ``output_dir`` outside ``input_dir`` (the error suggests one).
- Files already in ``output_dir`` are not replaced unless ``overwrite=true``; the run is refused before writing.
- Each file is written atomically (temporary file + ``os.replace``): an interrupted run leaves whole PNGs only.
- The log says how many files were written, also when a run fails part-way.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from src.data.transforms import build_test_transform
from src.models.authors import AuthorsWeights, open_checkpoint
from src.models.module import SegmentationModule
from src.utils.checkpoint import CheckpointError, UserError, atomic_write
from src.utils.instantiate import build_module, check_config
from src.utils.visualize import colorize

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class PredictionError(ValueError, UserError):
    """The inputs or outputs of a prediction run are unusable: nothing found, unreadable, or a file at risk."""


def load_weights(
    model: SegmentationModule,
    ckpt_path: str | Path,
    checkpoint: dict | AuthorsWeights | None = None,
    backbone_ckpt: str | Path | list | None = None,
) -> None:
    """Load a checkpoint into ``model``, safely (``weights_only=True`` or safetensors).

    A depthforge checkpoint holds the trainable tensors and is checked to have been made for this model
    configuration. The authors' REIN/DepthForge files (src/models/authors.py) are recognised by their keys:
    ``ckpt_path`` their training checkpoint (with their backbone file as ``backbone_ckpt``) or a merged full file;
    ``model`` must then be built from ``AuthorsWeights.architecture(cfg)`` so that the VFMs they hold are not
    fetched. ``checkpoint``: the file's contents (or the authors' files) if already read with
    :func:`~src.models.authors.open_checkpoint`.
    """
    if checkpoint is None:
        checkpoint, weights = open_checkpoint(ckpt_path, backbone_ckpt)
        checkpoint = checkpoint if weights is None else weights
    if isinstance(checkpoint, AuthorsWeights):
        checkpoint.load_into(model.segmenter)
        return
    try:
        model.on_load_checkpoint(checkpoint)
    except CheckpointError as err:  # name the file: the model's check does not know it
        raise CheckpointError(f"ckpt_path={ckpt_path}: {err}") from err


def depth_panel(depth: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Relative depth (H, W) -> an (h, w, 3) RGB picture, near = bright."""
    d = depth.float().cpu().numpy()
    d = (d - d.min()) / max(float(d.max() - d.min()), 1e-6)
    d = cv2.resize((d * 255).astype(np.uint8), size[::-1], interpolation=cv2.INTER_LINEAR)
    return cv2.applyColorMap(d, cv2.COLORMAP_INFERNO)[..., ::-1]


def _listing(paths: list[Path], limit: int = 5) -> str:
    shown = ", ".join(str(p) for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def plan_outputs(in_dir: Path, out_dir: Path, overwrite: bool = False) -> list[tuple[Path, Path]]:
    """(input image, output PNG) for every image under ``in_dir``, after refusing any layout that could lose a file.

    See the module docstring for the rules. Raises :class:`PredictionError` naming the files and the fix.
    """
    if not in_dir.is_dir():
        raise PredictionError(
            f"input_dir={in_dir} is not a folder\n  fix: input_dir=<a folder of {'/'.join(IMAGE_SUFFIXES)} images>"
        )
    files = sorted(p for p in in_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise PredictionError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under input_dir={in_dir}")
    unreadable = [p for p in files if not cv2.haveImageReader(str(p))]
    if unreadable:
        raise PredictionError(
            f"{len(unreadable)} file(s) under input_dir={in_dir} have an image suffix but are not images OpenCV can "
            f"read: {_listing(unreadable)} ({unreadable[0].stat().st_size:,} bytes)\n"
            "  fix: remove or convert them (a download that stopped early leaves such a file), then run again"
        )
    by_name: dict[Path, list[Path]] = defaultdict(list)
    for path in files:
        by_name[out_dir / path.relative_to(in_dir).with_suffix(".png")].append(path)
    plan: list[tuple[Path, Path]] = []
    renamed: list[tuple[list[Path], Path]] = []
    for target, sources in by_name.items():
        if len(sources) == 1:
            plan.append((sources[0], target))
        else:  # a.jpg and a.png: each keeps its suffix, a.jpg.png and a.png.png
            plan += [(src, target.with_name(src.name + ".png")) for src in sources]
            renamed.append((sources, target))
    clashes = [t for t, n in Counter(t for _, t in plan).items() if n > 1]
    if clashes:
        raise PredictionError(
            f"several images under input_dir={in_dir} would be written to the same file: {_listing(clashes)}\n"
            "  fix: rename the inputs so that their names differ by more than the suffix"
        )
    root = in_dir.resolve()
    inside = [t for _, t in plan if t.resolve().is_relative_to(root)]
    if inside:
        suggestion = in_dir.resolve().parent / f"{in_dir.resolve().name}_predictions"
        raise PredictionError(
            f"output_dir={out_dir} would put predictions inside input_dir={in_dir} ({_listing(inside, 2)}): they "
            "could overwrite input images of the same name and would be read as inputs by the next run\n"
            f"  fix: an output_dir outside input_dir, e.g. output_dir={suggestion}"
        )
    existing = [t for _, t in plan if t.exists() or t.is_symlink()]
    if existing and not overwrite:
        raise PredictionError(
            f"output_dir={out_dir} already holds {len(existing)} of the {len(plan)} files this run would write: "
            f"{_listing(existing)}\n  fix: overwrite=true to replace them, or another output_dir"
        )
    for sources, target in renamed:
        log.warning("%s would all be written to %s: each keeps its suffix instead", _listing(sources), target)
    return plan


def write_png(path: Path, rgb: np.ndarray) -> None:
    """Encode an RGB image as PNG and write it atomically; an encoding failure raises (cv2.imwrite would not)."""
    ok, data = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"OpenCV could not encode the prediction for {path} as PNG")
    with atomic_write(path) as f:
        f.write(data.tobytes())


def _require(cfg: DictConfig, key: str, example: str) -> None:
    if OmegaConf.is_missing(cfg, key) or cfg.get(key) in (None, ""):
        raise PredictionError(f"{key} is not set\n  fix: add {key}={example} to the command line")


@torch.no_grad()
def predict_folder(cfg: DictConfig) -> list[Path]:
    """Segment every image under ``cfg.input_dir`` into ``cfg.output_dir``; returns the files written."""
    _require(cfg, "ckpt_path", "<run dir>/checkpoints/last.ckpt")
    _require(cfg, "input_dir", "<folder of images>")
    _require(cfg, "output_dir", "<folder outside input_dir>")
    check_config(cfg)
    in_dir, out_dir = Path(cfg.input_dir).expanduser(), Path(cfg.output_dir).expanduser()
    plan = plan_outputs(in_dir, out_dir, overwrite=bool(cfg.get("overwrite", False)))
    # a missing or damaged file fails before the model is built
    checkpoint, authors_weights = open_checkpoint(cfg.ckpt_path, cfg.get("backbone_ckpt"))
    model = build_module(cfg if authors_weights is None else authors_weights.architecture(cfg))
    load_weights(model, cfg.ckpt_path, checkpoint if authors_weights is None else authors_weights)
    device = torch.device(cfg.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(device).eval()
    depth_model = model.segmenter.depth_backbone
    if cfg.with_depth and depth_model is None:
        raise PredictionError(
            "with_depth=true needs a model with a depth backbone (this adapter reads no depth)\n  fix: with_depth=false"
        )
    transform = build_test_transform(tuple(cfg.scale) if cfg.get("scale") else None)
    written: list[Path] = []
    try:
        for path, target in plan:
            rgb = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if rgb is None:
                raise PredictionError(
                    f"cannot decode image {path} ({path.stat().st_size:,} bytes)\n  fix: remove or convert it"
                )
            rgb = cv2.cvtColor(rgb, cv2.COLOR_BGR2RGB)
            image = transform(image=rgb)["image"][None].to(device)
            probs = model(image)
            pred = torch.nn.functional.interpolate(probs, size=rgb.shape[:2], mode="bilinear").argmax(1)[0]
            panels = [rgb, colorize(pred).numpy()]
            if cfg.with_depth:
                panels.append(depth_panel(depth_model.predict_depth(image)[0], rgb.shape[:2]))
            write_png(target, np.concatenate(panels, axis=1) if cfg.side_by_side or cfg.with_depth else panels[1])
            written.append(target)
    except BaseException:
        log.error("wrote %d of %d predictions to %s before the error below", len(written), len(plan), out_dir)
        raise
    log.info("wrote %d predictions to %s", len(written), out_dir)
    return written


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    predict_folder(cfg)


if __name__ == "__main__":
    main()
