"""The depth-fusion ablations of the paper's Tables 4–5, each a small change of :class:`DepthForgeAdapter`.

The paper names these rows but gives no code for them; docs/method.md §3.2 and D8 give the reading implemented
here. f are the visual patch tokens, d the paired depth tokens, T the layer's tokens. The depth paths that add
parameters start at zero (W_c = [I | 0], W_d = 0), so every variant starts as REIN on the frozen features and depth
only enters through training. The "w/o scale factor" row is ``DepthForgeAdapter(zero_mlp_delta_f=True)``, and the
"No Depth" row is :class:`ReinAdapter` itself.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from src.models.adapters.depthforge import DepthForgeAdapter


class _VisualAwareness(DepthForgeAdapter):
    """Variants whose awareness map is REIN's, S = softmax(f·Tᵀ/√C): depth enters elsewhere."""

    def awareness(self, f: Tensor, d: Tensor, t: Tensor) -> Tensor:
        return self.logits(f, t).softmax(dim=-1)


class DepthBiasAdapter(_VisualAwareness):
    """Table 4 "concat" = Table 5 Config1: f ← f + d, then REIN; attention and both residuals see f + d."""

    def inputs(self, tokens: Tensor, layer: int, depth: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        f, d, t = super().inputs(tokens, layer, depth)
        return f + d, d, t


class ConcatFusionAdapter(_VisualAwareness):
    """Table 5 "Concatenation": f ← W_c[f; d] + b_c, then REIN. W_c starts as [I | 0], b_c as 0."""

    def __init__(self, num_layers: int, embed_dim: int, **kwargs) -> None:
        super().__init__(num_layers, embed_dim, **kwargs)
        self.depth_fuse = nn.Linear(2 * embed_dim, embed_dim)
        with torch.no_grad():
            self.depth_fuse.weight.zero_()
            self.depth_fuse.weight[:, :embed_dim] = torch.eye(embed_dim)
            self.depth_fuse.bias.zero_()

    def inputs(self, tokens: Tensor, layer: int, depth: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        f, d, t = super().inputs(tokens, layer, depth)
        return self.depth_fuse(torch.cat([f, d], dim=-1)), d, t


class DepthTokenAdapter(_VisualAwareness):
    """Table 5 "Depth Token": T ← T + W_d·mean_n(d) + b_d per image, then REIN. W_d, b_d start at 0."""

    def __init__(self, num_layers: int, embed_dim: int, **kwargs) -> None:
        super().__init__(num_layers, embed_dim, **kwargs)
        self.depth_to_token = nn.Linear(embed_dim, embed_dim)
        nn.init.zeros_(self.depth_to_token.weight)
        nn.init.zeros_(self.depth_to_token.bias)

    def inputs(self, tokens: Tensor, layer: int, depth: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        f, d, t = super().inputs(tokens, layer, depth)
        return f, d, t + self.depth_to_token(d.mean(dim=1)).unsqueeze(1)  # per-image tokens (B, M, C)


class SoftmaxAverageAdapter(DepthForgeAdapter):
    """Table 5 Config2: S = ½(softmax(f·Tᵀ/√C) + softmax(d·Tᵀ/√C)), one softmax per modality."""

    def awareness(self, f: Tensor, d: Tensor, t: Tensor) -> Tensor:
        return (self.logits(f, t).softmax(dim=-1) + self.logits(d, t).softmax(dim=-1)) / 2


class DepthAwarenessOnlyAdapter(DepthForgeAdapter):
    """Table 4 "Depth Anything V2": f' = f + s·(S·T) with Eq. 5's S; no W₁/W₂, every token (0 too) a value."""

    def _build_update(self, embed_dim: int, scale_init: float, zero_mlp_delta_f: bool) -> None:
        if zero_mlp_delta_f:
            raise ValueError(f"{type(self).__name__} has no W₂ for zero_mlp_delta_f to zero-initialise")
        self.scale = nn.Parameter(torch.tensor(scale_init))

    def forward(
        self, tokens: Tensor, layer: int, depth: Tensor | None = None, grid: tuple[int, int] | None = None
    ) -> Tensor:
        f, d, t = self.inputs(tokens, layer, depth)
        return f + self.scale * (self.awareness(f, d, t) @ t)
