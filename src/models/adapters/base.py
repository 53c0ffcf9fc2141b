"""The adapter seam: a per-layer parameter-efficient module that edits the visual VFM's patch tokens."""

from __future__ import annotations

import torch
from torch import nn


class Adapter(nn.Module):
    """Base class of every token-tuning method (DepthForge, REIN, ...).

    The visual backbone calls ``adapter(tokens, layer, depth)`` after block ``layer`` with the *patch* tokens
    only (B, N, C): prefix tokens (cls/registers) bypass the adapter, and SAM's NHWC grid arrives flattened.
    ``depth`` is the paired depth-VFM patch tokens (B, N, C) for that layer, or ``None``.
    """

    #: whether the method reads depth tokens; when False the depth VFM is not built or run.
    uses_depth: bool = False

    def forward(self, tokens: torch.Tensor, layer: int, depth: torch.Tensor | None = None) -> torch.Tensor:
        return tokens

    def queries(self) -> torch.Tensor | None:
        """Image-independent object queries (Q, D_q) linked to the tokens (SPEC §2.4), or None."""
        return None

    def attach(self, visual_backbone: nn.Module) -> None:
        """Hook for methods that live inside blocks (LoRA, AdaptFormer) or extend the sequence (VPT)."""


class IdentityAdapter(Adapter):
    """No adapter: the frozen-VFM baseline."""
