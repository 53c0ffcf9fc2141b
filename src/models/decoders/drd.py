"""Depth refinement decoder (DRD, SPEC §4): fuses the four backbone maps into a refinement of the stride-4 map.

Both variants resize every level to the stride-4 size, transform each level, concatenate, fuse with a 1×1 conv
and add the result to X₀ only (SPEC D4). They differ in the per-level transform:

- ``"implemented"`` (default, SPEC §4.1, the authors' ``DynamicQueryCorrectionModule``): one attention gate shared
  by all levels — a pixel-wise channel gate σ(W₂ ReLU(W₁ X)) then a 3×3 spatial gate σ(conv(X)), each multiplied
  onto X. 4,336,705 parameters at C = 1024.
- ``"paper"`` (SPEC §4.2, Eq. 7–8 as we read them): a separate FC → FC → ReLU per level, the two FCs being 1×1
  convs C → C/r → C with no activation in between (the text puts the ReLU after both). The fused map is added
  to X₀ as in the code, so that the two variants differ only in the per-level transform. 4,723,968 parameters
  at C = 1024.

All weights keep PyTorch's default init, as in the authors' code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

VARIANTS = ("implemented", "paper")


class DepthRefinementDecoder(nn.Module):
    """Refines the stride-4 backbone map with information from all four levels; the other levels pass through."""

    def __init__(self, channels: int, reduction: int = 16, num_levels: int = 4, variant: str = "implemented") -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        self.variant = variant
        self.num_levels = num_levels
        hidden = channels // reduction
        if variant == "implemented":
            self.channel_attention = nn.Sequential(
                nn.Conv2d(channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, channels, 1), nn.Sigmoid()
            )
            self.spatial_attention = nn.Sequential(nn.Conv2d(channels, 1, 3, padding=1), nn.Sigmoid())
        else:
            self.level_mlps = nn.ModuleList(
                nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.Conv2d(hidden, channels, 1), nn.ReLU())
                for _ in range(num_levels)
            )
        self.fuse = nn.Conv2d(num_levels * channels, channels, 1)

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
        """Shared gate of SPEC §4.1: X ⊙ a (pixel-wise channel attention), then ⊙ m (spatial attention)."""
        x = x * self.channel_attention(x)
        return x * self.spatial_attention(x)
