"""What the model's parts declare about themselves, so that the composition layer never guesses from names.

- :class:`ShapeSpec`: the channels and image stride of one feature map, as a part that emits maps states them
  (``output_shape()``, in the manner of Detectron2) and a part that reads maps is built from them.
- ``no_weight_decay()``: each trainable part names the parameters (relative to itself) that take no weight decay
  (in the manner of timm). :func:`norm_parameter_names` is the shared rule for normalisation layers, decided by
  module type.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

#: normalisation layers, whose affine parameters never take weight decay (docs/method.md §7.1)
NORM_MODULES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)


@dataclass(frozen=True)
class ShapeSpec:
    """One feature map: ``channels`` and its ``stride`` in input pixels."""

    channels: int
    stride: int


def norm_parameter_names(module: nn.Module) -> set[str]:
    """Names (relative to ``module``) of the parameters of every normalisation layer inside it."""
    return {
        f"{m_name}.{p_name}" if m_name else p_name
        for m_name, m in module.named_modules()
        if isinstance(m, NORM_MODULES)
        for p_name, _ in m.named_parameters(recurse=False)
    }
