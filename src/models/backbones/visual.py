"""Frozen visual VFM (any timm ViT, EVA or SAM) that calls a token adapter between its blocks (SPEC §1.1).

One wrapper serves every family so that adapters, decoders and heads never know which ViT they sit on: the
family-specific part is only the embed + block loop, written once per timm class below.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.models._manipulate import checkpoint
from timm.models.eva import Eva
from timm.models.vision_transformer import VisionTransformer
from timm.models.vision_transformer_sam import VisionTransformerSAM
from torch import Tensor, nn

from src.models.adapters.base import Adapter
from src.models.parts import ShapeSpec, norm_parameter_names
from src.models.weights import missing_weights, timm_weight_source

#: Image strides of the 4 output levels (docs/method.md §1.1). A patch-16 ViT resamples its grid ×4, ×2, ×1, ×½.
#: The backbone states them in :meth:`VisualBackbone.output_shape`, which the decoder and the head are built from.
LEVEL_STRIDES = (4, 8, 16, 32)

#: A step receives (layer index, patch tokens (B, N, C)) after each block and returns the patch tokens.
BlockStep = Callable[[int, Tensor], Tensor]


def default_out_indices(num_layers: int) -> list[int]:
    """Blocks 8/12/16/24 of a 24-layer ViT (SPEC §1.1), scaled to other depths.

    Rule: ``round_half_up(k·L/24) − 1`` for k in (8, 12, 16, 24), clamped to [0, L−1]. Duplicates are kept
    (L=2 gives [0, 0, 0, 1]) because every level needs a map, and the same block may feed several levels.
    L=32 (SAM-H) gives [10, 15, 20, 31].
    """
    return [min(max((2 * k * num_layers + 24) // 48 - 1, 0), num_layers - 1) for k in (8, 12, 16, 24)]


def run_block(model: nn.Module, block: nn.Module, x: Tensor, **kwargs: Tensor | None) -> Tensor:
    """Run one block, recomputing its activations in backward when the model has grad checkpointing on."""
    if model.grad_checkpointing and torch.is_grad_enabled():
        return checkpoint(block, x, **kwargs)
    return block(x, **kwargs)


def with_patches(x: Tensor, num_prefix: int, step: BlockStep, layer: int) -> Tensor:
    """Hand only the patch tokens to ``step``; prefix tokens (cls/registers) bypass it unchanged."""
    if num_prefix == 0:
        return step(layer, x)
    return torch.cat([x[:, :num_prefix], step(layer, x[:, num_prefix:])], dim=1)


def _vit_blocks(model: VisionTransformer, images: Tensor, step: BlockStep) -> None:
    """DINOv2 / CLIP / plain ViT: exactly ``forward_features`` up to (not including) the final norm."""
    x = model.patch_embed(images)
    x = model._pos_embed(x)
    x = model.patch_drop(x)
    x = model.norm_pre(x)
    for i, block in enumerate(model.blocks):
        x = with_patches(run_block(model, block, x), model.num_prefix_tokens, step, i)


def _eva_blocks(model: Eva, images: Tensor, step: BlockStep) -> None:
    """EVA02: like ViT, but every block also takes the rotary embedding of the current grid."""
    x = model.patch_embed(images)
    x, rope = model._pos_embed(x)
    x = model.norm_pre(x)
    per_block_rope = getattr(model, "rope_mixed", False) and rope is not None
    for i, block in enumerate(model.blocks):
        x = run_block(model, block, x, rope=rope[i] if per_block_rope else rope)
        x = with_patches(x, model.num_prefix_tokens, step, i)


def _sam_blocks(model: VisionTransformerSAM, images: Tensor, step: BlockStep) -> None:
    """SAM: NHWC tokens and no prefix; the grid is flattened for the step and restored for the next block."""
    x = model.patch_embed(images)
    x = x + timm.layers.resample_abs_pos_embed_nhwc(model.pos_embed, x.shape[1:3])
    x = model.pos_drop(x)
    x = model.patch_drop(x)
    x = model.norm_pre(x)
    for i, block in enumerate(model.blocks):
        x = run_block(model, block, x)
        b, h, w, c = x.shape
        x = step(i, x.reshape(b, h * w, c)).reshape(b, h, w, c)


BlockLoop = Callable[[nn.Module, Tensor, BlockStep], None]


@dataclass(frozen=True)
class Family:
    """How a timm model class runs as a backbone: its embed + block ``loop``, and whether timm can build it for any
    input size (``dynamic_img_size``); a fixed-size family is built at ``img_size`` and must get inputs of it."""

    loop: BlockLoop
    dynamic_img_size: bool = True


#: timm model class -> its :class:`Family`. A new family registers itself with :func:`register_family`.
FAMILIES: dict[type[nn.Module], Family] = {
    VisionTransformer: Family(_vit_blocks),
    Eva: Family(_eva_blocks),
    VisionTransformerSAM: Family(_sam_blocks, dynamic_img_size=False),
}


def register_family(model_class: type[nn.Module], dynamic_img_size: bool = True) -> Callable[[BlockLoop], BlockLoop]:
    """Decorator: ``loop(model, images, step)`` runs a ``model_class`` ViT's embedding and blocks, calling
    ``step(layer, patch_tokens)`` after each block and continuing with what it returns (docs/extending.md)."""

    def register(loop: BlockLoop) -> BlockLoop:
        FAMILIES[model_class] = Family(loop, dynamic_img_size)
        return loop

    return register


def _supported() -> str:
    return "(" + ", ".join(cls.__name__ for cls in FAMILIES) + ")"


def _family_of(model: nn.Module | type[nn.Module]) -> Family | None:
    """The family of a model (or class): the most derived registered class wins, so a family may specialise
    another (a ViT subclass, say)."""
    cls = model if isinstance(model, type) else type(model)
    matches = [c for c in FAMILIES if issubclass(cls, c)]
    best = next((c for c in matches if all(issubclass(c, other) for other in matches)), None)
    return FAMILIES[best] if best is not None else None


def _builds_dynamic(model_name: str) -> bool:
    """Whether the family of ``model_name``'s timm entrypoint takes ``dynamic_img_size`` (unknown: yes)."""
    module = timm.models.model_entrypoint(timm.models.get_arch_name(model_name)).__module__
    family = next((f for c, f in FAMILIES.items() if c.__module__ == module), None)
    return family is None or family.dynamic_img_size


def _is_sam(model_name: str) -> bool:
    """SAM is built differently (no ``dynamic_img_size``; weights only load at the native image size)."""
    entrypoint = timm.models.model_entrypoint(timm.models.get_arch_name(model_name))
    return entrypoint.__module__ == VisionTransformerSAM.__module__


def _create(model_name: str, **kwargs: object) -> nn.Module:
    """``timm.create_model``; a non-ViT (no img_size/patch_size/dynamic_img_size kwargs) gets a clear error."""
    try:
        return timm.create_model(model_name, **kwargs)
    except TypeError as err:
        raise ValueError(f"{model_name!r} cannot be built as a backbone of a family {_supported()}: {err}") from err


class VisualBackbone(nn.Module):
    """Frozen timm ViT returning 4 maps at strides 4/8/16/32, with an adapter called after every block.

    Weights: ``checkpoint_path`` (a local .safetensors/.pth/.bin, takes precedence) or ``pretrained=True`` (timm
    hub weights, honouring ``cache_dir`` and ``HF_HUB_OFFLINE``). Both go through timm's checkpoint filter, which
    resamples the patch kernel (e.g. 14→16) and the pos-embed to the ``img_size // patch_size`` grid (SPEC D2).
    """

    def __init__(
        self,
        model_name: str,
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        img_size: int | Sequence[int] = 512,
        patch_size: int = 16,
        out_indices: list[int] | None = None,
        model_kwargs: dict | None = None,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.model = self._build(model_name, pretrained, checkpoint_path, img_size, patch_size, model_kwargs, cache_dir)
        family = _family_of(self.model)
        if family is None:
            raise ValueError(f"{model_name!r} builds a {type(self.model).__name__}, not a family {_supported()}")
        self._blocks = family.loop
        self.model.requires_grad_(False).eval()

        self.embed_dim: int = self.model.embed_dim
        self.num_layers: int = len(self.model.blocks)
        self.patch_size: int = self.model.patch_embed.patch_size[0]
        self.num_prefix_tokens: int = getattr(self.model, "num_prefix_tokens", 0)
        self.out_indices: list[int] = (
            list(out_indices) if out_indices is not None else default_out_indices(self.num_layers)
        )
        #: each level's resampling of the token grid, patch/stride: (4, 2, 1, ½) at patch 16, (2, 1, ½, ¼) at patch 8
        self.level_scales: tuple[float, ...] = tuple(self.patch_size / s for s in LEVEL_STRIDES)
        if len(self.out_indices) != len(LEVEL_STRIDES) or not all(0 <= i < self.num_layers for i in self.out_indices):
            raise ValueError(f"out_indices must be 4 block indices in [0, {self.num_layers}), got {self.out_indices}")

    @staticmethod
    def _build(
        model_name: str,
        pretrained: bool,
        checkpoint_path: str | None,
        img_size: int | Sequence[int],
        patch_size: int,
        model_kwargs: dict | None,
        cache_dir: str | None,
    ) -> nn.Module:
        from src.models import weights  # the checks that tell a damaged weight file from other failures

        with_weights = pretrained or checkpoint_path is not None
        kwargs: dict = {"num_classes": 0, "patch_size": patch_size}
        if not _is_sam(model_name):
            kwargs |= {"img_size": img_size, **({"dynamic_img_size": True} if _builds_dynamic(model_name) else {})}
        elif not with_weights:
            # SAM's filter cannot resample pos/rel-pos, so a checkpoint loads only at its native img_size; the
            # model then resamples both in forward for any input size (docs/method.md L2).
            kwargs["img_size"] = img_size
        kwargs |= dict(model_kwargs or {})
        what, fetch = f"timm model {model_name!r}", f"--timm {model_name}"
        download = f"`python {weights.DOWNLOAD_SCRIPT} {fetch} --cache-dir <dir>`"
        if checkpoint_path is not None:
            path = Path(checkpoint_path).expanduser()
            if not path.is_file():
                reason = (
                    "a directory, not a weight file (.safetensors, .pth, .bin)" if path.is_dir() else "no such file"
                )
                raise missing_weights(what, f"local file {str(path)!r}", fetch, reason, cache_dir)
            try:
                return _create(model_name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
            except Exception as err:  # timm's loaders fail opaquely on a damaged file: find out whether it is one
                problem = weights.weight_file_problem(path)
                if problem is None:
                    raise
                fix = (
                    f"copy the original file again and point checkpoint_path at it, or fetch the hub weights with "
                    f"{download} and load them with checkpoint_path=null pretrained=true "
                    "(with `export HF_HUB_CACHE=<dir>; export HF_HUB_OFFLINE=1` on a machine without internet)"
                )
                raise weights.corrupt_weights(what, path, problem, fix) from err
        if not pretrained:
            return _create(model_name, pretrained=False, **kwargs)
        try:
            return _create(model_name, pretrained=True, cache_dir=cache_dir, **kwargs)
        except OSError as err:  # hub miss in offline mode, no network, HTTP errors: all OSError subclasses
            raise missing_weights(what, f"the hub ({timm_weight_source(model_name)})", fetch, err, cache_dir) from err
        except Exception as err:  # a damaged file in the hub cache (e.g. a cache copied over an unstable link)
            source = timm_weight_source(model_name)
            snapshot = None if "://" in source else weights.hub_snapshot(source, cache_dir)
            found = weights.folder_problem(snapshot) if snapshot is not None else None
            if found is None:
                raise
            fix = (
                f"delete the damaged cache entry {snapshot.parents[1]} and fetch it again with "
                f"`python {weights.DOWNLOAD_SCRIPT} {fetch} --cache-dir {snapshot.parents[2]}`"
            )
            raise weights.corrupt_weights(what, found[0], found[1], fix) from err

    def train(self, mode: bool = True) -> VisualBackbone:
        """Keep the frozen VFM in eval mode whatever the trainer asks (SPEC §1.3)."""
        super().train(mode)
        self.model.eval()
        return self

    def output_shape(self) -> list[ShapeSpec]:
        """Channels and image stride of each of the maps :meth:`forward` returns."""
        return [ShapeSpec(self.embed_dim, stride) for stride in LEVEL_STRIDES]

    def no_weight_decay(self) -> set[str]:
        """When the VFM trains (the ``full`` baseline): its norm layers take no weight decay (method §7.1)."""
        return norm_parameter_names(self)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in backward: the adapter's gradient still flows through every block."""
        self.model.set_grad_checkpointing(enable)

    def grid_size(self, h: int, w: int) -> tuple[int, int]:
        """Token grid of an h×w input (the patch embedding floors partial patches)."""
        ph, pw = self.model.patch_embed.patch_size
        return h // ph, w // pw

    def forward(
        self, images: Tensor, adapter: Adapter | None = None, depth_tokens: list[Tensor] | None = None
    ) -> list[Tensor]:
        """Run the blocks with ``adapter(patch_tokens, i, depth_tokens[i], grid)`` after block i; return the maps
        described by :meth:`output_shape`.

        Gradients flow through the frozen blocks to the adapter's parameters (no ``no_grad`` here).
        """
        grid = self.grid_size(*images.shape[-2:])
        if depth_tokens is not None:
            if len(depth_tokens) != self.num_layers:
                raise ValueError(f"need one depth tensor per visual layer ({self.num_layers}), got {len(depth_tokens)}")
            if depth_tokens[0].shape[1] != grid[0] * grid[1]:
                raise ValueError(f"depth tokens have {depth_tokens[0].shape[1]} positions, visual grid is {grid}")
        collected: dict[int, Tensor] = {}

        def step(layer: int, tokens: Tensor) -> Tensor:
            if adapter is not None:
                tokens = adapter(tokens, layer, depth_tokens[layer] if depth_tokens is not None else None, grid)
            if layer in self.out_indices:
                collected[layer] = tokens
            return tokens

        self._blocks(self.model, images, step)
        return [self._to_map(collected[i], grid, scale) for i, scale in zip(self.out_indices, self.level_scales)]

    @staticmethod
    def _to_map(tokens: Tensor, grid: tuple[int, int], scale: float) -> Tensor:
        """(B, N, C) row-major patch tokens → (B, C, g_h, g_w), resampled bilinearly to the level's stride."""
        fmap = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)
        if scale == 1.0:
            return fmap
        return F.interpolate(fmap, scale_factor=scale, mode="bilinear", align_corners=False)
