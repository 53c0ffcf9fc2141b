"""DepthForge (ICCV 2025): REIN's tokens attend with depth-aware logits (SPEC §3.1), and the D8 ablations."""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor, nn

from src.models.adapters.rein import ReinAdapter

Variant = Literal["da_ao", "depth_bias", "concat", "depth_token", "config2", "da_only"]
VARIANTS: tuple[str, ...] = get_args(Variant)


class DepthForgeAdapter(ReinAdapter):
    """REIN whose attention also sees the frozen depth VFM's tokens d of the same layer.

    ``variant`` picks how depth enters (SPEC D8; f visual patch tokens, d depth tokens, T = T_i):

    - ``da_ao`` (default, §3.1): S = softmax(f·Tᵀ/√C + d·Tᵀ/√C), f' = f + s·Δ(f, S). The residual uses the
      visual f only, so depth steers which tokens are read but is never written into the visual stream.
    - ``depth_bias`` (Table 4 "concat" = Table 5 Config1): f ← f + d, then REIN; attention and both residuals
      see f + d, i.e. depth is added to the visual stream at every layer.
    - ``concat`` (Table 5 "Concatenation"): f ← W_c[f; d] + b_c, then REIN.
    - ``depth_token`` (Table 5 "Depth Token"): T ← T + W_d·mean_n(d) + b_d per image, then REIN.
    - ``config2`` (Table 5 Config2): S = ½(softmax(f·Tᵀ/√C) + softmax(d·Tᵀ/√C)), f' = f + s·Δ(f, S).
    - ``da_only`` (Table 4 "Depth Anything V2"): f' = f + s·(S·T) with the ``da_ao`` S; no W₁/W₂ and every
      token, token 0 included, is a value.

    The "w/o scale factor" row is ``zero_mlp_delta_f=True``; REIN itself is :class:`ReinAdapter`.
    The new depth paths of ``concat``/``depth_token`` start at zero (W_c = [I | 0], W_d = 0), so every variant
    starts as REIN on the frozen features and depth only enters through training.
    """

    uses_depth = True

    def __init__(
        self,
        num_layers: int,
        embed_dim: int,
        num_tokens: int = 100,
        rank: int | None = 16,
        query_dim: int = 256,
        link_token_to_query: bool = True,
        scale_init: float = 1e-3,
        zero_mlp_delta_f: bool = False,
        variant: Variant = "da_ao",
    ) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"unknown DepthForge variant {variant!r}; expected one of {VARIANTS}")
        if variant == "da_only" and zero_mlp_delta_f:
            raise ValueError("variant 'da_only' has no W₂ for zero_mlp_delta_f to zero-initialise")
        super().__init__(
            num_layers, embed_dim, num_tokens, rank, query_dim, link_token_to_query, scale_init, zero_mlp_delta_f
        )
        self.variant = variant
        if variant == "da_only":
            del self.mlp_token2feat, self.mlp_delta_f  # depth-aware attention alone, without the alignment MLPs
        elif variant == "concat":
            self.depth_fuse = nn.Linear(2 * embed_dim, embed_dim)
            with torch.no_grad():
                self.depth_fuse.weight.zero_()
                self.depth_fuse.weight[:, :embed_dim] = torch.eye(embed_dim)
                self.depth_fuse.bias.zero_()
        elif variant == "depth_token":
            self.depth_to_token = nn.Linear(embed_dim, embed_dim)
            nn.init.zeros_(self.depth_to_token.weight)
            nn.init.zeros_(self.depth_to_token.bias)

    def _inputs(self, tokens: Tensor, layer: int, depth: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """(f, d, T) after the variant has let depth into the visual stream or the tokens."""
        if depth is None:
            raise ValueError(
                "DepthForgeAdapter needs the paired depth tokens of every layer (depth=None): build the Segmenter "
                "with a depth_backbone"
            )
        if depth.shape != tokens.shape:
            raise ValueError(f"depth tokens {tuple(depth.shape)} do not match the visual tokens {tuple(tokens.shape)}")
        # depth is an input of the module: it is never modified and never receives gradient (§3.1 step 6)
        f, d, t = tokens, depth.detach(), self.layer_tokens(layer)
        # where depth enters the visual stream or the tokens (the D8 ablations)
        if self.variant == "depth_bias":
            f = f + d
        elif self.variant == "concat":
            f = self.depth_fuse(torch.cat([f, d], dim=-1))
        elif self.variant == "depth_token":
            t = t + self.depth_to_token(d.mean(dim=1)).unsqueeze(1)  # per-image tokens (B, M, C)
        return f, d, t

    def _weights(self, f: Tensor, d: Tensor, t: Tensor) -> Tensor:
        """S: the awareness map (B, N, M)."""
        if self.variant in ("da_ao", "da_only"):
            return (self.logits(f, t) + self.logits(d, t)).softmax(dim=-1)  # §3.1: Λ = fTᵀ/√C + dTᵀ/√C
        if self.variant == "config2":
            return (self.logits(f, t).softmax(dim=-1) + self.logits(d, t).softmax(dim=-1)) / 2
        return self.logits(f, t).softmax(dim=-1)

    def attention(self, tokens: Tensor, layer: int, depth: Tensor | None = None) -> Tensor:
        return self._weights(*self._inputs(tokens, layer, depth))

    def forward(self, tokens: Tensor, layer: int, depth: Tensor | None = None) -> Tensor:
        f, d, t = self._inputs(tokens, layer, depth)
        weights = self._weights(f, d, t)
        if self.variant == "da_only":
            return f + self.scale * (weights @ t)  # f' = f + s·(S·T)
        return f + self.scale * self.delta(f, weights, t)  # f' = f + s·Δ, Δ = W₂(G + f) + b₂
