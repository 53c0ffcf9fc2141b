"""DepthForge (ICCV 2025): REIN's tokens attend with depth-aware logits (the paper's §4.1–4.2, docs/method.md §3).

Per visual layer i, with f the visual patch tokens after block i, d the frozen depth VFM's tokens of the paired
layer and T = T_i the layer's learnable tokens (M, C):

- Eq. 5, depth awareness: S = softmax(f·Tᵀ/√C + d·Tᵀ/√C) over the M tokens; each modality's logits get their own
  temperature and one softmax reads both.
- Eq. 6, attention optimisation: G = S[..., 1:]·(T[1:]W₁ᵀ + b₁) (token 0 is a sink, as in REIN), then
  Δ = W₂(G + f) + b₂ (the inner residual) and f' = f + s·Δ (the outer residual). The residuals use the visual f
  only: depth steers which tokens are read but is never written into the visual stream, and receives no gradient.

Everything else — tokens, W₁, W₂, s, the query link — is REIN's (:class:`ReinAdapter`), so depth adds no
trainable parameter. The ablations of Tables 4–5 are subclasses in :mod:`src.models.adapters.depthforge_ablations`.
"""

from __future__ import annotations

from torch import Tensor

from src.models.adapters.rein import ReinAdapter


def paired_depth(owner: object, tokens: Tensor, depth: Tensor | None) -> Tensor:
    """The depth tokens of the layer, checked against the visual tokens and cut from autograd (method §3.1)."""
    if depth is None:
        raise ValueError(
            f"{type(owner).__name__} needs the paired depth tokens of every layer (depth=None): build the Segmenter "
            "with a depth_backbone"
        )
    if depth.shape != tokens.shape:
        raise ValueError(f"depth tokens {tuple(depth.shape)} do not match the visual tokens {tuple(tokens.shape)}")
    return depth.detach()


class DepthForgeAdapter(ReinAdapter):
    """REIN whose awareness map also reads the frozen depth VFM's tokens of the same layer (Eq. 5–6).

    The two steps are separate methods so that an ablation changes one of them: :meth:`inputs` says where depth
    enters (here: only the awareness map), :meth:`awareness` how S is formed.
    """

    uses_depth = True

    def inputs(self, tokens: Tensor, layer: int, depth: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """(f, d, T): the visual tokens, the layer's depth tokens and the layer's learnable tokens."""
        return tokens, paired_depth(self, tokens, depth), self.layer_tokens(layer)

    def awareness(self, f: Tensor, d: Tensor, t: Tensor) -> Tensor:
        """Eq. 5: S = softmax(f·Tᵀ/√C + d·Tᵀ/√C) (B, N, M)."""
        return (self.logits(f, t) + self.logits(d, t)).softmax(dim=-1)

    def attention(self, tokens: Tensor, layer: int, depth: Tensor | None = None) -> Tensor:
        return self.awareness(*self.inputs(tokens, layer, depth))

    def forward(
        self, tokens: Tensor, layer: int, depth: Tensor | None = None, grid: tuple[int, int] | None = None
    ) -> Tensor:
        f, d, t = self.inputs(tokens, layer, depth)
        return f + self.scale * self.delta(f, self.awareness(f, d, t), t)  # Eq. 6: f' = f + s·Δ(f, S)
