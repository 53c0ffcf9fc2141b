"""FADA baseline (Bi et al., NeurIPS 2024; docs/method.md §9) — a RECONSTRUCTION: the FADA repository holds no code.

What the paper states: a Haar wavelet transform splits the frozen VFM's features into a low-frequency part
(content, kept stable) and high-frequency parts (style, suppressed with instance normalisation), each adapted by
its own set of frequency tokens, REIN-style, after every layer, with the same Mask2Former head. Everything else
below is our reading (method §9); its parameter count (5,520,898 on ViT-L) is not the reported 11.65 M.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from src.models.adapters.base import Adapter
from src.models.adapters.rein import ReinAdapter


def haar_dwt(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Orthonormal one-level Haar transform of (B, C, H, W), H and W even: (LL, LH, HL, HH), each (B, C, H/2, W/2)."""
    a, b = x[..., 0::2, 0::2], x[..., 0::2, 1::2]
    c, d = x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    return (a + b + c + d) / 2, (-a - b + c + d) / 2, (-a + b - c + d) / 2, (a - b - c + d) / 2


def haar_idwt(ll: Tensor, lh: Tensor, hl: Tensor, hh: Tensor) -> Tensor:
    """Inverse of :func:`haar_dwt` (the transform is orthonormal, so it is its transpose)."""
    b, c, h, w = ll.shape
    x = ll.new_empty(b, c, 2 * h, 2 * w)
    x[..., 0::2, 0::2] = (ll - lh - hl + hh) / 2
    x[..., 0::2, 1::2] = (ll - lh + hl - hh) / 2
    x[..., 1::2, 0::2] = (ll + lh - hl - hh) / 2
    x[..., 1::2, 1::2] = (ll + lh + hl + hh) / 2
    return x


def _sequence(band: Tensor) -> Tensor:
    """(B, C, h, w) → (B, h·w, C)."""
    return band.flatten(2).transpose(1, 2)


def _grid(sequence: Tensor, h: int, w: int) -> Tensor:
    """(B, h·w, C) → (B, C, h, w)."""
    return sequence.transpose(1, 2).unflatten(2, (h, w))


class FADAAdapter(Adapter):
    """Two REIN branches on the Haar sub-bands of the patch-token grid, after every block:

    - low:  LL' = LL + s_L·Δ_L(LL), REIN's update (§2.2) with the tokens T^L_i;
    - high: b' = b + s_H·Δ_H(IN(b)) for b ∈ {LH, HL, HH}, tokens T^H_i shared by the three sub-bands, where IN is
      a per-sample, per-channel instance norm over the sub-band (eps 1e-5, no affine), so that the high-frequency
      tokens see the bands without their style statistics;
    - f' = IDWT(LL', LH', HL', HH') = f + IDWT(s_L·Δ_L, s_H·Δ_H) (the transform is linear and exact).

    Queries come from the low-frequency tokens (method §2.4). A grid with an odd side is padded by replication to
    even and cropped back. The token grid comes with each call; without one the grid must be square.
    ``token_kwargs`` are REIN's (:class:`ReinAdapter`) for both branches; the high branch has no query link.
    """

    def __init__(self, num_layers: int, embed_dim: int, **token_kwargs) -> None:
        super().__init__()
        if "zero_mlp_delta_f" in token_kwargs:
            raise ValueError("FADA's branches keep REIN's learnable scale; zero_mlp_delta_f is not an option")
        self.low_frequency = ReinAdapter(num_layers, embed_dim, **token_kwargs)
        self.high_frequency = ReinAdapter(num_layers, embed_dim, **{**token_kwargs, "link_token_to_query": False})

    @property
    def provides_queries(self) -> bool:
        return self.low_frequency.provides_queries

    def no_weight_decay(self) -> set[str]:
        return {
            f"{name}.{p}"
            for name, branch in (("low_frequency", self.low_frequency), ("high_frequency", self.high_frequency))
            for p in branch.no_weight_decay()
        }

    def log_scalars(self) -> dict[str, Tensor]:
        low, high = self.low_frequency.log_scalars(), self.high_frequency.log_scalars()
        return {**{f"{k}_low": v for k, v in low.items()}, **{f"{k}_high": v for k, v in high.items()}}

    def forward(
        self, tokens: Tensor, layer: int, depth: Tensor | None = None, grid: tuple[int, int] | None = None
    ) -> Tensor:
        n = tokens.shape[1]
        gh, gw = grid if grid is not None else (math.isqrt(n), math.isqrt(n))
        if gh * gw != n:
            raise ValueError(f"FADA cannot lay {n} tokens on the grid {gh}×{gw} (the call's grid, or a square one)")
        x = F.pad(_grid(tokens, gh, gw), (0, gw % 2, 0, gh % 2), mode="replicate")
        ll, *highs = haar_dwt(x)
        h, w = ll.shape[-2:]

        delta_low = self.low_frequency.refinement(_sequence(ll), layer)  # s_L·Δ_L(LL)
        normed = torch.cat([_sequence(F.instance_norm(band, eps=1e-5)) for band in highs], dim=1)
        delta_high = self.high_frequency.refinement(normed, layer).chunk(3, dim=1)  # s_H·Δ_H(IN(b)), per band

        delta = haar_idwt(_grid(delta_low, h, w), *(_grid(d, h, w) for d in delta_high))
        return tokens + _sequence(delta[..., :gh, :gw])

    def queries(self) -> Tensor | None:
        return self.low_frequency.queries()
