"""AdaptFormer baseline (Chen et al., NeurIPS 2022; method D9): a bottleneck MLP in parallel with each block's MLP.

Per block, with x' the tokens after attention and LN₂(x') the frozen MLP's input (AdaptFormer Eq. 2–3):
x = x' + MLP-branch(x') + s·W_up·ReLU(W_down·LN₂(x')), s = 0.1. The branch is added to the block output, outside
the block's LayerScale, as in AdaptFormer's (LayerScale-free) ViT. AdaptFormer's "lora" init: W_down
kaiming-uniform(a=√5), W_up = 0 and zero biases, so the frozen VFM is unchanged at init.
"""

from __future__ import annotations

from functools import partial

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from src.models.adapters.hooks import BlockHookAdapter


class Bottleneck(nn.Module):
    """W_up·ReLU(W_down·h + b_down) + b_up."""

    def __init__(self, embed_dim: int, bottleneck: int) -> None:
        super().__init__()
        self.down = nn.Linear(embed_dim, bottleneck)
        self.up = nn.Linear(bottleneck, embed_dim)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: Tensor) -> Tensor:
        return self.up(self.down(h).relu())


class AdaptFormerAdapter(BlockHookAdapter):
    """AdaptMLP beside every block's MLP: 24·(2·1024·64 + 64 + 1024) = 3,171,840 parameters on ViT-L."""

    def __init__(self, num_layers: int, embed_dim: int, bottleneck: int = 64, scale: float = 0.1) -> None:
        super().__init__(num_layers, embed_dim)
        self.scale = scale
        self.bottlenecks = nn.ModuleList(Bottleneck(embed_dim, bottleneck) for _ in range(num_layers))
        self._pending: dict[int, Tensor] = {}

    def hook_block(self, layer: int, block: nn.Module) -> list[RemovableHandle]:
        return [
            block.mlp.register_forward_hook(partial(self._branch, layer)),
            block.register_forward_hook(partial(self._add_branch, layer)),
        ]

    def _branch(self, layer: int, mlp: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
        self._pending[layer] = self.scale * self.bottlenecks[layer](args[0])  # s·x̃ from the MLP's input LN₂(x')

    def _add_branch(self, layer: int, block: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> Tensor:
        return output + self._pending.pop(layer).reshape(output.shape)  # SAM runs its MLP on (B, H·W, C)
