"""MiniDG's two VFMs, built and read through the project's own backbones, as the segmenter builds and reads them.

The visual VFM is a :class:`~src.models.backbones.visual.VisualBackbone` configured by
``conf/model/backbone/minidg_vit.yaml``, the home of its architecture. The depth VFM is a
:class:`~src.models.backbones.depth.DepthBackbone` configured by ``conf/model/depth/minidg_depth.yaml``. Once
trained, its architecture travels in the ``config.json`` that ``save_pretrained`` writes, as a real Depth Anything's
does. Before training it is :data:`DEPTH_ARCHITECTURE`, the YAML's ``config`` for a random init. That dict cannot
live in the YAML: ``DepthBackbone`` takes exactly one of ``pretrained`` and ``config``, and every key of the YAML is
one of its arguments, so a YAML that loads the trained model cannot also hold the untrained architecture.

The analyses read every block's patch tokens through the backbones' real forward paths: the visual tokens as the
adapter receives them (:class:`BlockTokens`), and the depth tokens as ``DepthBackbone`` aligns them to the visual
token grid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from src.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from src.minidg.render import IMAGE_SIZE
from src.models.adapters.base import Adapter
from src.models.backbones.depth import DepthBackbone
from src.models.backbones.visual import VisualBackbone

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
VISUAL_CONFIG = CONF_DIR / "model" / "backbone" / "minidg_vit.yaml"
DEPTH_CONFIG = CONF_DIR / "model" / "depth" / "minidg_depth.yaml"

#: ``DepthBackbone(config=...)`` of the depth VFM before training: Depth Anything with a DINOv2 backbone of the
#: visual VFM's width, depth and heads, at Depth Anything's patch 14. ``out_indices`` scale V2-small's
#: [3, 6, 9, 12] to 6 blocks.
DEPTH_ARCHITECTURE: dict[str, Any] = {
    "backbone_config": {
        "hidden_size": 128,
        "num_hidden_layers": 6,
        "num_attention_heads": 4,
        "intermediate_size": 512,
        "patch_size": 14,
        "image_size": 16 * 14,
        "out_indices": [2, 3, 5, 6],
        "apply_layernorm": True,
        "reshape_hidden_states": False,
    },
    "reassemble_hidden_size": 128,
    "patch_size": 14,
    "neck_hidden_sizes": [16, 32, 64, 128],
    "fusion_hidden_size": 16,
    "head_hidden_size": 8,
    "depth_estimation_type": "relative",
}

_MEAN = torch.tensor([m / 255 for m in IMAGENET_MEAN]).view(1, 3, 1, 1)  # of 0..1 RGB
_STD = torch.tensor([s / 255 for s in IMAGENET_STD]).view(1, 3, 1, 1)


def normalize(images: np.ndarray) -> torch.Tensor:
    """uint8 RGB (B, H, W, 3) -> ImageNet-normalised float (B, 3, H, W), the pipeline's preprocessing."""
    return (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - _MEAN) / _STD


def _config(path: Path, overrides: dict[str, Any]) -> DictConfig:
    """The YAML with ``overrides`` merged in, under a root whose ``paths`` are the runs' (conf/paths/default.yaml),
    so that its ``${paths.root_dir}`` resolves as in a run."""
    root = OmegaConf.create({"paths": OmegaConf.load(CONF_DIR / "paths" / "default.yaml")})
    root.vfm = OmegaConf.merge(OmegaConf.load(path), overrides)
    return root.vfm


def visual_grid(size: tuple[int, int] = IMAGE_SIZE) -> tuple[int, int]:
    """The visual VFM's token grid for an image of ``size`` (its configured patch size), without building it."""
    patch = OmegaConf.load(VISUAL_CONFIG).patch_size
    return size[0] // patch, size[1] // patch


def visual_vfm(checkpoint: str | Path | None, **overrides: Any) -> VisualBackbone:
    """``conf/model/backbone/minidg_vit.yaml``'s backbone, from ``checkpoint`` (None: random init, for pretraining).

    ``overrides`` are merged into the YAML (``model_kwargs={...}`` adds to its timm kwargs). Frozen and in eval mode.
    """
    path = None if checkpoint is None else str(checkpoint)
    return hydra.utils.instantiate(_config(VISUAL_CONFIG, {"checkpoint_path": path, **overrides}))


def depth_vfm(pretrained: str | Path | None) -> DepthBackbone:
    """``conf/model/depth/minidg_depth.yaml``'s backbone, from a ``save_pretrained`` directory; with None, a random
    init of :data:`DEPTH_ARCHITECTURE` (for pretraining). Frozen and in eval mode."""
    if pretrained is None:
        overrides = {"pretrained": None, "config": DEPTH_ARCHITECTURE}
    else:
        overrides = {"pretrained": str(pretrained), "config": None}
    return hydra.utils.instantiate(_config(DEPTH_CONFIG, overrides))()


class BlockTokens(Adapter):
    """An adapter that records the patch tokens it is handed after every block and returns them unchanged."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens: list[torch.Tensor] = []

    def forward(self, tokens: torch.Tensor, layer: int, *args: object) -> torch.Tensor:
        self.tokens.append(tokens)
        return tokens


def visual_block_tokens(backbone: VisualBackbone, x: torch.Tensor) -> torch.Tensor:
    """(B, L, N, C) patch tokens after each block, as an adapter receives them in ``VisualBackbone.forward``."""
    recorder = BlockTokens()
    backbone(x, recorder)
    return torch.stack(recorder.tokens, 1)


def depth_block_tokens(backbone: DepthBackbone, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, L, N, C) raw patch tokens of every block on the visual token ``grid``, as ``DepthBackbone`` yields them."""
    return torch.stack(backbone(x, grid), 1)


def depth_output(backbone: DepthBackbone, x: torch.Tensor, grid: tuple[int, int], **kwargs: Any) -> Any:
    """The whole Depth Anything model (encoder, DPT neck and head) on the input ``DepthBackbone`` feeds its encoder
    for ``grid`` (``align``); with gradients when they are enabled."""
    return backbone.model(pixel_values=backbone.aligned_input(x, grid), **kwargs)
