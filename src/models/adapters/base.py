"""The adapter seam: a per-layer parameter-efficient module that edits the visual VFM's patch tokens.

An adapter describes itself to the parts around it, so that nothing has to guess from its parameter names:

- ``uses_depth``: whether it reads the depth VFM's tokens (the depth VFM is only built and run when it does);
- ``provides_queries``: whether :meth:`Adapter.queries` returns object queries, which the mask head then uses
  instead of learning its own (docs/method.md §2.4);
- :meth:`Adapter.no_weight_decay`: its parameters that take no weight decay;
- :meth:`Adapter.log_scalars`: scalars worth watching during training (REIN's scale s, for instance).
"""

from __future__ import annotations

import torch
from torch import nn

from src.models.parts import norm_parameter_names


class Adapter(nn.Module):
    """Base class of every token-tuning method (DepthForge, REIN, ...); ``docs/extending.md`` adds one.

    The visual backbone calls ``adapter(tokens, layer, depth, grid)`` after block ``layer`` with the *patch*
    tokens only, (B, N, C) in row-major order: prefix tokens (cls/registers) bypass the adapter, and SAM's NHWC
    grid arrives flattened. ``depth`` is the depth VFM's patch tokens (B, N, C) paired with that layer (``None``
    unless ``uses_depth``), and ``grid`` = (g_h, g_w) with g_h·g_w = N is the token grid of the current input.
    """

    #: whether the method reads depth tokens; when False the depth VFM is not built or run.
    uses_depth: bool = False

    @property
    def provides_queries(self) -> bool:
        """Whether :meth:`queries` returns the head's object queries; the head learns its own when False."""
        return False

    def forward(
        self,
        tokens: torch.Tensor,
        layer: int,
        depth: torch.Tensor | None = None,
        grid: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        return tokens

    def queries(self) -> torch.Tensor | None:
        """Image-independent object queries (Q, D_q) linked to the tokens (docs/method.md §2.4), or None."""
        return None

    def attach(self, visual_backbone: nn.Module) -> None:
        """Hook for methods that live inside blocks (LoRA, AdaptFormer) or extend the sequence (VPT)."""

    def no_weight_decay(self) -> set[str]:
        """Names of this adapter's parameters (relative to it) that take no weight decay: its norm layers'."""
        return norm_parameter_names(self)

    def log_scalars(self) -> dict[str, torch.Tensor]:
        """Scalars logged as ``train/<name>`` at every logged training step."""
        return {}


class IdentityAdapter(Adapter):
    """No adapter: the frozen-VFM baseline."""
