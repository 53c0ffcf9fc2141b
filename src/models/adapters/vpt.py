"""VPT-deep baseline (Jia et al., ECCV 2022; method D9): P learnable prompts joined to the sequence of every block.

Block i sees [tokens, P_i]; its prompt outputs are dropped after the block, so the next block gets fresh prompts
and the backbone (and its adapter call) never sees them. Where the prompts sit in the sequence does not change a
ViT block, which treats the tokens as a set; under EVA's rotary embedding they get the identity rotation, i.e.
no position, like prefix tokens.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from src.models.adapters.hooks import BlockHookAdapter
from src.models.adapters.rein import INIT_PATCH_SIZE


class VPTAdapter(BlockHookAdapter):
    """Deep prompts (L, P, C): 24·150·1024 = 3,686,400 parameters on ViT-L.

    Init as VPT: U(±√(6/(3p² + C))) with patch p = 16. Token sequences only: SAM's blocks take an NHWC grid
    with windowed attention, to which prompts cannot be joined.
    """

    def __init__(self, num_layers: int, embed_dim: int, num_prompts: int = 150) -> None:
        super().__init__(num_layers, embed_dim)
        self.num_prompts = num_prompts
        v = math.sqrt(6.0 / (3 * INIT_PATCH_SIZE**2 + embed_dim))
        self.prompts = nn.Parameter(torch.empty(num_layers, num_prompts, embed_dim).uniform_(-v, v))

    def no_weight_decay(self) -> set[str]:
        """The prompts are tokens: no weight decay (docs/method.md §7.1)."""
        return super().no_weight_decay() | {"prompts"}

    def hook_block(self, layer: int, block: nn.Module) -> list[RemovableHandle]:
        return [
            block.register_forward_pre_hook(partial(self._join, layer), with_kwargs=True),
            block.register_forward_hook(self._drop),
        ]

    def _join(
        self, layer: int, block: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        x, *rest = args
        if x.dim() != 3:
            raise ValueError(f"VPT joins prompts to a token sequence (B, N, C); this block takes {x.dim()}-D input")
        prompts = self.prompts[layer].to(x.dtype).expand(x.shape[0], -1, -1)
        rope = kwargs.get("rope")
        if rope is not None:
            # timm's concatenated [sin | cos] rotary table over the non-prefix tokens: sin 0, cos 1 = no rotation
            half = rope.shape[-1] // 2
            identity = torch.cat([rope.new_zeros(half), rope.new_ones(half)])
            kwargs = {**kwargs, "rope": torch.cat([rope, identity.expand(*rope.shape[:-2], self.num_prompts, -1)], -2)}
        return (torch.cat([x, prompts], dim=1), *rest), kwargs

    def _drop(self, block: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
        return output[:, : -self.num_prompts]
