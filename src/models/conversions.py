"""The authors' weight conversions and run-time position-embedding resize, on plain state-dict tensors.

DepthForge (like REIN before it) runs DINOv2 ViT-L/14 and Depth Anything V2's DINOv2 encoder with 16-pixel patches
on a 32 × 32 grid. The authors convert both checkpoints offline; this module does the same arithmetic at load time
(docs/method.md §1.1, §1.2, D1, D2; docs/backbones.md):

- :func:`bicubic_patch_embed`: the patch kernel (C, 3, 14, 14) → (C, 3, p, p) by a plain bicubic resize of its values
  (no rescaling), as the authors' converter does it. timm's ``resample_patch_embed`` (FlexiViT's pseudo-inverse)
  is a different function: its patch embeddings are about 0.77× (≈ 196/256) those of the bicubic kernel.
- :func:`bicubic_pos_embed`: the stored position grid (37 × 37) → the crop's grid (32 × 32), bicubic by target size,
  no antialias; the prefix (cls) positions are kept.
- :func:`scale_factor_pos_embed`: the resize DINOv2 (and Depth Anything V2's copy of it) applies in every forward,
  ``interpolate_pos_encoding``: bicubic by the scale factor (g + 0.1)/√N, no antialias. timm resizes by target size
  with antialias, transformers by target size without it; all three differ whenever the grid differs from the
  stored one (any input other than the 512 crop once the grid is stored at 32 × 32).

The functions take and return tensors only, so the visual and depth backbones and the import of the authors'
checkpoints share them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

#: DINOv2's ``interpolate_offset``: added to the target grid before the scale factor is taken (DINOv2 with registers
#: uses 0.0; DINOv2-L and Depth Anything V2 use 0.1)
INTERPOLATE_OFFSET = 0.1


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def _square_side(num_positions: int) -> int:
    side = math.isqrt(num_positions)
    if side * side != num_positions:
        raise ValueError(f"the stored position grid must be square, got {num_positions} positions")
    return side


def bicubic_patch_embed(weight: Tensor, patch: int | Sequence[int]) -> Tensor:
    """The authors' patch-kernel conversion: ``F.interpolate(weight.float(), size=(p, p), mode="bicubic",
    align_corners=False)`` (no antialias, no rescaling of the values).

    ``weight``: a conv kernel (C_out, C_in, k, k); returns (C_out, C_in, p_h, p_w) in float32, as their converter.
    A token then sums p² pixels with weights meant for k², so its embedding is about p²/k² (256/196) larger than
    timm's pseudo-inverse resampling gives.
    """
    return F.interpolate(weight.float(), size=_pair(patch), mode="bicubic", align_corners=False)


def bicubic_pos_embed(pos_embed: Tensor, grid: int | Sequence[int], num_prefix: int = 1) -> Tensor:
    """The authors' load-time position-grid conversion: the square stored grid (1, num_prefix + s², C) is resized
    bicubically to ``grid`` = (g_h, g_w) by target size (``align_corners=False``, no antialias); the first
    ``num_prefix`` positions (cls) are kept unchanged. Returns (1, num_prefix + g_h·g_w, C) in the input's dtype.

    This is their converter's ``interpolate_pos_embed_`` (DepthForge) / ``load_backbone`` (REIN): 37² → 32² for
    a 512 crop at patch 16.
    """
    gh, gw = _pair(grid)
    prefix, patches = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    side, dim = _square_side(patches.shape[1]), patches.shape[-1]
    resized = F.interpolate(
        patches.reshape(-1, side, side, dim).permute(0, 3, 1, 2), size=(gh, gw), mode="bicubic", align_corners=False
    )
    return torch.cat((prefix, resized.permute(0, 2, 3, 1).reshape(-1, gh * gw, dim)), dim=1)


def scale_factor_pos_embed(
    pos_embed: Tensor,
    grid: int | Sequence[int],
    num_prefix: int = 1,
    image_size: Sequence[int] | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """DINOv2's run-time ``interpolate_pos_encoding`` (also Depth Anything V2's encoder), on a stored position
    embedding (1, num_prefix + N, C) with a square grid of √N per side, for a token ``grid`` (g_h, g_w).

    - When the input has as many patches as stored (g_h·g_w == N) and a square image, the stored embedding is
      returned as it is. DINOv2 tests the image's pixel sides, so give ``image_size`` = (H, W); without it the
      image counts as square when g_h == g_w.
    - Otherwise, in float32: the patch grid is resized with ``F.interpolate(mode="bicubic")`` (no antialias,
      ``align_corners=False``) by the *scale factor* ((g_h + 0.1)/√N, (g_w + 0.1)/√N), not to a target size. The
      output size is floor(g + 0.1) = g, which DINOv2 asserts (a ``RuntimeError`` here); the sample positions
      follow the scale factor, so they differ slightly from a resize to (g_h, g_w). The prefix positions are kept.
      The result is cast to ``dtype`` (DINOv2 casts to the tokens' dtype; default: ``pos_embed``'s).
    """
    gh, gw = _pair(grid)
    num_positions = pos_embed.shape[1] - num_prefix
    square = image_size[0] == image_size[1] if image_size is not None else gh == gw
    if gh * gw == num_positions and square:
        return pos_embed
    pos = pos_embed.float()
    prefix, patches = pos[:, :num_prefix], pos[:, num_prefix:]
    dim = pos.shape[-1]
    sqrt_n = math.sqrt(num_positions)
    side = int(sqrt_n)
    h0, w0 = gh + INTERPOLATE_OFFSET, gw + INTERPOLATE_OFFSET
    patches = F.interpolate(
        patches.reshape(1, side, side, dim).permute(0, 3, 1, 2),
        scale_factor=(h0 / sqrt_n, w0 / sqrt_n),
        mode="bicubic",
        antialias=False,
    )
    if (int(h0), int(w0)) != tuple(patches.shape[-2:]):
        raise RuntimeError(f"scale-factor resize gave a {tuple(patches.shape[-2:])} grid, expected {(gh, gw)}")
    patches = patches.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((prefix, patches), dim=1).to(pos_embed.dtype if dtype is None else dtype)
