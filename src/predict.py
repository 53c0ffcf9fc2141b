"""Segment a folder of images: colourised PNGs in the Cityscapes palette, optionally beside the depth map.

python -m src.predict experiment=gta2citys ckpt_path=… input_dir=photos/ output_dir=out/ with_depth=true
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from src.data.transforms import build_test_transform
from src.models.module import SegmentationModule
from src.utils.checkpoint import safe_torch_load
from src.utils.instantiate import build_module
from src.utils.visualize import colorize

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def load_weights(model: SegmentationModule, ckpt_path: str | Path) -> None:
    """Load a trainable-only checkpoint safely and check that it was made for this model configuration."""
    model.on_load_checkpoint(safe_torch_load(ckpt_path))


def depth_panel(depth: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Relative depth (H, W) -> an (h, w, 3) RGB picture, near = bright."""
    d = depth.float().cpu().numpy()
    d = (d - d.min()) / max(float(d.max() - d.min()), 1e-6)
    d = cv2.resize((d * 255).astype(np.uint8), size[::-1], interpolation=cv2.INTER_LINEAR)
    return cv2.applyColorMap(d, cv2.COLORMAP_INFERNO)[..., ::-1]


@torch.no_grad()
def predict_folder(cfg: DictConfig) -> list[Path]:
    in_dir, out_dir = Path(cfg.input_dir), Path(cfg.output_dir)
    files = sorted(p for p in in_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {in_dir}")
    model = build_module(cfg)
    load_weights(model, cfg.ckpt_path)
    device = torch.device(cfg.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(device).eval()
    depth_model = model.segmenter.depth_backbone
    if cfg.with_depth and depth_model is None:
        raise ValueError("with_depth=true needs a model with a depth backbone (this adapter reads no depth)")
    transform = build_test_transform(tuple(cfg.scale) if cfg.get("scale") else None)
    written = []
    for path in files:
        rgb = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if rgb is None:
            raise OSError(f"cannot decode image {path}")
        rgb = cv2.cvtColor(rgb, cv2.COLOR_BGR2RGB)
        image = transform(image=rgb)["image"][None].to(device)
        probs = model(image)
        pred = torch.nn.functional.interpolate(probs, size=rgb.shape[:2], mode="bilinear").argmax(1)[0]
        panels = [rgb, colorize(pred).numpy()]
        if cfg.with_depth:
            panels.append(depth_panel(depth_model.predict_depth(image)[0], rgb.shape[:2]))
        target = out_dir / path.relative_to(in_dir).with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        out = np.concatenate(panels, axis=1) if cfg.side_by_side or cfg.with_depth else panels[1]
        cv2.imwrite(str(target), cv2.cvtColor(np.ascontiguousarray(out), cv2.COLOR_RGB2BGR))
        written.append(target)
    log.info("wrote %d predictions to %s", len(written), out_dir)
    return written


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    predict_folder(cfg)


if __name__ == "__main__":
    main()
