"""LoRA baseline (Hu et al., ICLR 2022; docs/method.md D9): rank-r updates W + B·A of every block's q, k, v projections.

Written as forward hooks rather than with ``peft``: peft swaps the projections for its own wrapper modules inside
the timm model, which renames the frozen VFM's weights (``qkv.base_layer.weight``) and puts trainable tensors
inside the module that the backbone freezes and rebuilds from its checkpoint. The maths and init are peft's
defaults for ``LoraConfig(r=8)``: A kaiming-uniform(a=√5), B = 0, scaling α/r = 1, no dropout.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from src.models.adapters.hooks import BlockHookAdapter


class LowRankUpdate(nn.Module):
    """x ↦ B·A·x, the trainable part of W + B·A; B = 0 at init leaves the frozen projection unchanged."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.down = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)  # A
        self.up = nn.Linear(rank, out_features, bias=False, device=device, dtype=dtype)  # B
        nn.init.zeros_(self.up.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(self.down(x))


class LoRAAdapter(BlockHookAdapter):
    """LoRA on each block's fused ``attn.qkv`` (DINOv2, CLIP, SAM: one A, B ∈ R^{3C×r}) or on its separate
    ``attn.q_proj/k_proj/v_proj`` (EVA02: three pairs).

    The updates are created by :meth:`attach`, because their shapes depend on how the family projects q, k, v:
    rank 8 gives 24·8·(1024 + 3072) = 786,432 on DINOv2-L and 24·3·8·2048 = 1,179,648 on EVA02-L (Table 7).
    """

    def __init__(self, num_layers: int, embed_dim: int, rank: int = 8) -> None:
        super().__init__(num_layers, embed_dim)
        self.rank = rank
        self.lora = nn.ModuleList()  # per block: {projection name: LowRankUpdate}

    def hook_block(self, layer: int, block: nn.Module) -> list[RemovableHandle]:
        attn = block.attn
        if isinstance(getattr(attn, "q_proj", None), nn.Linear):
            names = ["q_proj", "k_proj", "v_proj"]
        elif isinstance(getattr(attn, "qkv", None), nn.Linear) and getattr(attn, "q_bias", None) is None:
            names = ["qkv"]
        else:  # e.g. EVA's fused qkv with separate biases, which calls F.linear on the weight, not the module
            raise ValueError(f"LoRA finds no q/k/v projection module it can hook in {type(attn).__name__}")
        updates = nn.ModuleDict()
        for name in names:
            proj = getattr(attn, name)
            updates[name] = LowRankUpdate(
                proj.in_features, proj.out_features, self.rank, proj.weight.device, proj.weight.dtype
            )
        self.lora.append(updates)
        return [getattr(attn, name).register_forward_hook(partial(_add_update, updates[name])) for name in names]


def _add_update(update: LowRankUpdate, module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> Tensor:
    """Forward hook of a frozen projection: W·x + b + B·A·x."""
    return output + update(args[0])
