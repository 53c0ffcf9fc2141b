"""REIN (Wei et al., CVPR 2024; the paper's Eq. 2): per-layer learnable tokens that refine a frozen VFM's patch
tokens (docs/method.md §2)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from src.models.adapters.base import Adapter

#: The authors' token init puts the patch size 16 into its fan-in whatever the backbone (method §2.1); kept for parity.
INIT_PATCH_SIZE = 16


def token_init_bound(embed_dim: int, rank: int | None) -> float:
    """v of the U(−v, v) token init: √(6/(3p² + √(C·r))) for low-rank tokens, √(6/(3p² + C)) at full rank."""
    fan = math.sqrt(embed_dim * rank) if rank is not None else embed_dim
    return math.sqrt(6.0 / (3 * INIT_PATCH_SIZE**2 + fan))


class ReinAdapter(Adapter):
    """REIN's token module: the authors' ``LoRAReins`` (``rank=16``, default) or ``Reins`` (``rank=None``).

    After block i the patch tokens f attend to the layer's M tokens T_i; the attended, feature-aligned tokens
    refine f through two residuals (method §2.2). The same tokens produce the head's object queries (§2.4).
    Parameter names are the authors', so that their checkpoints map one to one. The tokens and s take no weight
    decay (:meth:`no_weight_decay`); s is logged as ``train/token_scale``.
    """

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
    ) -> None:
        super().__init__()
        self.num_layers, self.embed_dim, self.num_tokens, self.rank = num_layers, embed_dim, num_tokens, rank
        self.link_token_to_query = link_token_to_query
        # §2.1 tokens, U(−v, v): T_i = A_i·B_i with A (L, M, r), B (L, r, C); full rank stores T (L, M, C)
        v = token_init_bound(embed_dim, rank)
        if rank is None:
            self.learnable_tokens = nn.Parameter(torch.empty(num_layers, num_tokens, embed_dim).uniform_(-v, v))
        else:
            self.learnable_tokens_a = nn.Parameter(torch.empty(num_layers, num_tokens, rank).uniform_(-v, v))
            self.learnable_tokens_b = nn.Parameter(torch.empty(num_layers, rank, embed_dim).uniform_(-v, v))
        self.scale: nn.Parameter | float
        self._build_update(embed_dim, scale_init, zero_mlp_delta_f)
        if link_token_to_query:
            self.transform = nn.Linear(embed_dim, query_dim)
            self.merge = nn.Linear(3 * query_dim, query_dim)

    def _build_update(self, embed_dim: int, scale_init: float, zero_mlp_delta_f: bool) -> None:
        """W₁,b₁ (aligns the tokens with the features), W₂,b₂ (turns G + f into Δ) and the scale s (Eq. 2).

        W₁ and W₂ are shared by all layers; PyTorch's default Linear init = the authors' kaiming-uniform(a=√5).
        """
        self.mlp_token2feat = nn.Linear(embed_dim, embed_dim)
        self.mlp_delta_f = nn.Linear(embed_dim, embed_dim)
        if zero_mlp_delta_f:
            # the "no scale factor" form: s ≡ 1, and Δ = 0 at init comes from W₂ = 0, b₂ = 0 instead of a small s
            nn.init.zeros_(self.mlp_delta_f.weight)
            nn.init.zeros_(self.mlp_delta_f.bias)
            self.scale = 1.0
        else:
            self.scale = nn.Parameter(torch.tensor(scale_init))

    @property
    def provides_queries(self) -> bool:
        return self.link_token_to_query

    def no_weight_decay(self) -> set[str]:
        """The tokens and s (docs/method.md §7.1), besides any norm layer."""
        tokens = {"learnable_tokens"} if self.rank is None else {"learnable_tokens_a", "learnable_tokens_b"}
        scale = {"scale"} if isinstance(self.scale, nn.Parameter) else set()
        return super().no_weight_decay() | tokens | scale

    def log_scalars(self) -> dict[str, Tensor]:
        return {"token_scale": self.scale} if isinstance(self.scale, nn.Parameter) else {}

    def layer_tokens(self, layer: int) -> Tensor:
        """T_i (M, C)."""
        if self.rank is None:
            return self.learnable_tokens[layer]
        return self.learnable_tokens_a[layer] @ self.learnable_tokens_b[layer]

    def all_tokens(self) -> Tensor:
        """T_all = stack_i T_i (L, M, C)."""
        if self.rank is None:
            return self.learnable_tokens
        return self.learnable_tokens_a @ self.learnable_tokens_b

    def logits(self, x: Tensor, tokens: Tensor) -> Tensor:
        """Λ = x·Tᵀ/√C (B, N, M); each modality's map gets its own temperature C^(−1/2) (method §2.2, §3.1)."""
        return x @ tokens.transpose(-1, -2) * self.embed_dim**-0.5

    def delta(self, f: Tensor, weights: Tensor, tokens: Tensor) -> Tensor:
        """Δ = W₂(G + f) + b₂ with G = S[..., 1:]·(T[1:]W₁ᵀ + b₁) (Eq. 2 and 6, method §2.2).

        Token 0 is in the softmax ``weights`` S but not among the values: a learnable sink that lets a patch take
        little from the others. ``tokens`` may be per image (B, M, C) as well as shared (M, C).
        """
        values = self.mlp_token2feat(tokens[..., 1:, :])  # V = T[1:]W₁ᵀ + b₁
        attended = weights[..., 1:] @ values  # G
        return self.mlp_delta_f(attended + f)  # inner residual G + f

    def attention(self, tokens: Tensor, layer: int, depth: Tensor | None = None) -> Tensor:
        """S (B, N, M) = softmax over the M tokens of Λ: how much each patch takes from each of the layer's tokens."""
        return self.logits(tokens, self.layer_tokens(layer)).softmax(dim=-1)

    def refinement(self, f: Tensor, layer: int) -> Tensor:
        """s·Δ for the patch tokens f (B, N, C) after block ``layer``."""
        return self.scale * self.delta(f, self.attention(f, layer), self.layer_tokens(layer))

    def forward(
        self, tokens: Tensor, layer: int, depth: Tensor | None = None, grid: tuple[int, int] | None = None
    ) -> Tensor:
        return tokens + self.refinement(tokens, layer)  # outer residual f' = f + s·Δ

    def queries(self) -> Tensor | None:
        """Q = merge([max, mean, last] over layers of transform(T_all)) (M, D_q) (method §2.4); None without the link.

        The three statistics of channel c sit at merge-input index 3·c + k, as in the authors' weights.
        """
        if not self.link_token_to_query:
            return None
        per_layer = self.transform(self.all_tokens()).permute(1, 2, 0)  # U (M, D_q, L)
        stats = torch.stack([per_layer.amax(dim=-1), per_layer.mean(dim=-1), per_layer[..., -1]], dim=-1)
        return self.merge(stats.flatten(1))  # (M, D_q, 3) → (M, 3·D_q) → (M, D_q)
