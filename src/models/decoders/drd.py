"""Depth refinement decoder (DRD, the paper's §4.3, docs/method.md §4): fuses the backbone's maps into a refinement
of the finest (stride-4) map.

Both variants resize every level to the stride-4 size, transform each level, concatenate, fuse with a 1×1 conv
and add the result to X₀ only (method D4). They differ in the per-level transform:

- ``"implemented"`` (default, method §4.1, the authors' ``DynamicQueryCorrectionModule``): one attention gate shared
  by all levels — a pixel-wise channel gate σ(W₂ ReLU(W₁ X)) then a 3×3 spatial gate σ(conv(X)), each multiplied
  onto X. 4,336,705 parameters at C = 1024.
- ``"paper"`` (method §4.2, the paper's Eq. 7–8 as we read them): a separate FC → FC → ReLU per level, the two
  FCs being 1×1
  convs C → C/r → C with no activation in between (the text puts the ReLU after both). The fused map is added
  to X₀ as in the code, so that the two variants differ only in the per-level transform. 4,723,968 parameters
  at C = 1024.

All weights keep PyTorch's default init, as in the authors' code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from src.models.parts import ShapeSpec, norm_parameter_names

VARIANTS = ("implemented", "paper")


class DepthRefinementDecoder(nn.Module):
    """Refines the stride-4 backbone map with information from all levels; the other levels pass through.

    Built from the backbone's ``output_shape()`` (``input_shape``: one :class:`ShapeSpec` per map, finest first,
    all of one width C) and states its own, which is the same.
    """

    def __init__(self, input_shape: list[ShapeSpec], reduction: int = 16, variant: str = "implemented") -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        widths = {spec.channels for spec in input_shape}
        if len(widths) != 1:
            raise ValueError(f"the DRD fuses maps of one width; got {[spec.channels for spec in input_shape]}")
        self.input_shape = list(input_shape)
        self.variant = variant
        self.num_levels = len(input_shape)
        channels = widths.pop()
        hidden = channels // reduction
        if variant == "implemented":
            self.channel_attention = nn.Sequential(
                nn.Conv2d(channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, channels, 1), nn.Sigmoid()
            )
            self.spatial_attention = nn.Sequential(nn.Conv2d(channels, 1, 3, padding=1), nn.Sigmoid())
        else:
            self.level_mlps = nn.ModuleList(
                nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.Conv2d(hidden, channels, 1), nn.ReLU())
                for _ in range(self.num_levels)
            )
        self.fuse = nn.Conv2d(self.num_levels * channels, channels, 1)

    def output_shape(self) -> list[ShapeSpec]:
        """The maps keep their widths and strides."""
        return list(self.input_shape)

    def no_weight_decay(self) -> set[str]:
        """Only norm layers would be exempt, and the DRD has none: every weight takes weight decay."""
        return norm_parameter_names(self)

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(maps) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} maps, got {len(maps)}")
        size = maps[0].shape[-2:]
        # Step 1: bring every level to the stride-4 grid of X₀.
        resized = [
            x if x.shape[-2:] == size else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            for x in maps
        ]
        # Step 2: per-level transform.
        if self.variant == "implemented":
            transformed = [self._gate(x) for x in resized]
        else:
            transformed = [mlp(x) for mlp, x in zip(self.level_mlps, resized)]
        # Step 3: concatenate along channels and fuse: R = Conv1×1([T(X₀); …; T(X₃)]).
        refinement = self.fuse(torch.cat(transformed, dim=1))
        # Step 4: X₀ ← X₀ + R.
        return [maps[0] + refinement, *maps[1:]]

    def _gate(self, x: torch.Tensor) -> torch.Tensor:
        """Shared gate of method §4.1: X ⊙ a (pixel-wise channel attention), then ⊙ m (spatial attention)."""
        x = x * self.channel_attention(x)
        return x * self.spatial_attention(x)
