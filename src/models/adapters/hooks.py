"""Adapters that live inside the visual VFM's blocks through forward hooks (LoRA, AdaptFormer, VPT).

Hooks leave the timm module tree untouched: the frozen VFM keeps its state-dict keys and its freezing, while the
trainable tensors stay owned by the adapter, so the optimiser and checkpoints find them under the adapter.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import nn
from torch.utils.hooks import RemovableHandle

from src.models.adapters.base import Adapter


class BlockHookAdapter(Adapter, ABC):
    """Base of the in-block methods: ``attach`` hooks every block once; the patch-token call stays the identity."""

    def __init__(self, num_layers: int, embed_dim: int) -> None:
        super().__init__()
        self.num_layers, self.embed_dim = num_layers, embed_dim
        self._handles: list[RemovableHandle] = []

    def attach(self, visual_backbone: nn.Module) -> None:
        if self._handles:
            raise RuntimeError(f"{type(self).__name__} is already attached to a visual backbone")
        blocks = visual_backbone.model.blocks
        if len(blocks) != self.num_layers or visual_backbone.embed_dim != self.embed_dim:
            raise ValueError(
                f"{type(self).__name__} was built for {self.num_layers} blocks of width {self.embed_dim}, the "
                f"backbone has {len(blocks)} of width {visual_backbone.embed_dim}"
            )
        self._handles = [handle for layer, block in enumerate(blocks) for handle in self.hook_block(layer, block)]

    @abstractmethod
    def hook_block(self, layer: int, block: nn.Module) -> list[RemovableHandle]:
        """Register the method's hooks on visual block ``layer`` and return their handles."""
