"""Frozen visual VFM (any timm ViT, EVA or SAM) that calls a token adapter between its blocks (docs/method.md §1.1).

One wrapper serves every family so that adapters, decoders and heads never know which ViT they sit on: the
family-specific part is only the embed + block loop, written once per timm class below.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import timm
import torch
import torch.nn.functional as F
from timm.models import eva, vision_transformer
from timm.models._manipulate import checkpoint
from timm.models.eva import Eva
from timm.models.vision_transformer import VisionTransformer
from timm.models.vision_transformer_sam import VisionTransformerSAM
from torch import Tensor, nn

from src.models.adapters.base import Adapter
from src.models.conversions import bicubic_patch_embed, bicubic_pos_embed, scale_factor_pos_embed
from src.models.parts import ShapeSpec
from src.models.weights import missing_weights, timm_weight_source

#: Image strides of the 4 output levels (docs/method.md §1.1). A patch-16 ViT resamples its grid ×4, ×2, ×1, ×½.
#: The backbone states them in :meth:`VisualBackbone.output_shape`, which the decoder and the head are built from.
LEVEL_STRIDES = (4, 8, 16, 32)

#: A step receives (layer index, patch tokens (B, N, C)) after each block and returns the patch tokens.
BlockStep = Callable[[int, Tensor], Tensor]

#: ``conversion``: how weights stored at another patch / grid size are converted at load (docs/method.md D2)
Conversion = Literal["timm", "authors"]
#: ``pos_embed_resize``: how the position embedding follows an input whose grid differs from the stored one
PosEmbedResize = Literal["timm", "authors"]


def default_out_indices(num_layers: int) -> list[int]:
    """Blocks 8/12/16/24 of a 24-layer ViT (docs/method.md §1.1), scaled to other depths.

    Rule: ``round_half_up(k·L/24) − 1`` for k in (8, 12, 16, 24), clamped to [0, L−1]. Duplicates are kept
    (L=2 gives [0, 0, 0, 1]) because every level needs a map, and the same block may feed several levels.
    L=32 (SAM-H) gives [10, 15, 20, 31].
    """
    return [min(max((2 * k * num_layers + 24) // 48 - 1, 0), num_layers - 1) for k in (8, 12, 16, 24)]


def run_block(model: nn.Module, block: nn.Module, x: Tensor, **kwargs: Tensor | None) -> Tensor:
    """Run one block, recomputing its activations in backward when the model has grad checkpointing on.

    Only the block's input is kept (the adapter step after it is checkpointed on its own by
    :meth:`VisualBackbone.forward`), and the adapter's gradient flows back through the recomputed block. The
    checkpoint is the non-reentrant one whatever ``TIMM_REENTRANT_CKPT`` says: the reentrant variant returns an
    output without gradient when the block's input needs none (block 0, whose input comes from the frozen
    embedding), which would silently drop the gradients of adapter weights living inside that block (LoRA,
    AdaptFormer).
    """
    if model.grad_checkpointing and torch.is_grad_enabled():
        return checkpoint(block, x, use_reentrant=False, **kwargs)
    return block(x, **kwargs)


def with_patches(x: Tensor, num_prefix: int, step: BlockStep, layer: int) -> Tensor:
    """Hand only the patch tokens to ``step``; prefix tokens (cls/registers) bypass it unchanged."""
    if num_prefix == 0:
        return step(layer, x)
    return torch.cat([x[:, :num_prefix], step(layer, x[:, num_prefix:])], dim=1)


def _timm_pos_embed(model: VisionTransformer, x: Tensor, image_size: Sequence[int]) -> Tensor:
    """timm's own step: prefix tokens + the position embedding resized to the grid by target size, antialiased."""
    return model._pos_embed(x)


def _dinov2_pos_embed(model: VisionTransformer, x: Tensor, image_size: Sequence[int]) -> Tensor:
    """timm's ``VisionTransformer._pos_embed`` with DINOv2's run-time resize (:func:`scale_factor_pos_embed`: bicubic
    by the scale factor (g + 0.1)/√N, no antialias) in place of timm's; the authors' DINOv2 does this in forward."""
    if x.ndim == 4:  # dynamic_img_size: (B, g_h, g_w, C)
        grid = x.shape[1:3]
        x = x.reshape(x.shape[0], -1, x.shape[-1])
    else:
        grid = model.patch_embed.grid_size
    prefix = [t.expand(x.shape[0], -1, -1) for t in (model.cls_token, model.reg_token) if t is not None]
    if model.pos_embed is None:
        return torch.cat([*prefix, x], dim=1)
    num_prefix = 0 if model.no_embed_class else model.num_prefix_tokens
    pos_embed = scale_factor_pos_embed(model.pos_embed, grid, num_prefix, image_size=image_size, dtype=x.dtype)
    if model.no_embed_class:
        x = torch.cat([*prefix, x + pos_embed], dim=1)
    else:
        x = torch.cat([*prefix, x], dim=1) + pos_embed
    return model.pos_drop(x)


def _vit_blocks(
    model: VisionTransformer,
    images: Tensor,
    step: BlockStep,
    pos_embed: Callable[[VisionTransformer, Tensor, Sequence[int]], Tensor] = _timm_pos_embed,
) -> None:
    """DINOv2 / CLIP / plain ViT: exactly ``forward_features`` up to (not including) the final norm; ``pos_embed``
    replaces timm's position-embedding step (``pos_embed_resize="authors"``: :func:`_dinov2_pos_embed`)."""
    x = model.patch_embed(images)
    x = pos_embed(model, x, images.shape[-2:])
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


#: timm's checkpoint filter of each family the authors' conversion supports: it still converts the checkpoint's
#: layout (DINOv2's own key names, EVA's prefixes); the patch kernel and the position grid bypass it
_LAYOUT_FILTERS: dict[type[nn.Module], Callable[[dict, nn.Module], dict]] = {
    VisionTransformer: vision_transformer.checkpoint_filter_fn,
    Eva: eva.checkpoint_filter_fn,
}


def authors_checkpoint_filter(state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """timm's checkpoint filter with the authors' conversion (docs/method.md D2) in place of timm's resampling.

    ``patch_embed.proj.weight`` and ``pos_embed`` are taken out and converted by :func:`bicubic_patch_embed` (a
    kernel of another size) and :func:`bicubic_pos_embed` (a grid other than the model's), the rest goes through
    the family's own timm filter for its layout only. Needs a checkpoint in timm's or DINOv2's own layout, without
    register tokens in DINOv2's layout (their position embedding is rearranged by timm).
    """
    layout_filter = next((f for cls, f in _LAYOUT_FILTERS.items() if isinstance(model, cls)), None)
    if layout_filter is None:
        raise ValueError(f"conversion='authors' supports ViT and EVA models, not {type(model).__name__}")
    for key in ("model", "state_dict"):
        state_dict = state_dict.get(key, state_dict)
    state_dict = dict(state_dict)
    kernel = state_dict.pop("patch_embed.proj.weight", None)
    pos_embed = state_dict.pop("pos_embed", None)
    if kernel is None or pos_embed is None or "register_tokens" in state_dict:
        raise ValueError(
            "conversion='authors' needs a checkpoint in timm's or DINOv2's layout (keys 'patch_embed.proj.weight' "
            "and 'pos_embed', no DINOv2 'register_tokens'); load this one with conversion='timm'"
        )
    out = layout_filter(state_dict, model)
    target = model.patch_embed.proj.weight.shape[-2:]
    out["patch_embed.proj.weight"] = kernel if kernel.shape[-2:] == target else bicubic_patch_embed(kernel, target)
    num_prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
    grid = tuple(model.patch_embed.grid_size)
    stored = pos_embed.shape[1] - num_prefix
    same_grid = stored == grid[0] * grid[1] and grid[0] == grid[1]
    out["pos_embed"] = pos_embed if same_grid else bicubic_pos_embed(pos_embed, grid, num_prefix)
    return out


def _create_authors(model_name: str, cache_dir: str | None = None, **kwargs: object) -> nn.Module:
    """``timm.create_model(pretrained=True)`` with :func:`authors_checkpoint_filter` instead of timm's filter.

    The weights come from the same place through timm's own loader (``load_pretrained``: the hub with
    ``cache_dir``, or ``pretrained_cfg_overlay={"file": ...}``, read by safetensors or ``torch.load(weights_only=
    True)``), so a missing or damaged file fails exactly as it does on timm's path.
    """
    model = _create(model_name, pretrained=False, **kwargs)
    timm.models.load_pretrained(
        model,
        num_classes=model.num_classes,
        in_chans=model.patch_embed.proj.in_channels,
        filter_fn=authors_checkpoint_filter,
        cache_dir=cache_dir,
    )
    return model


class VisualBackbone(nn.Module):
    """Frozen timm ViT returning 4 maps at strides 4/8/16/32, with an adapter called after every block.

    Weights: ``checkpoint_path`` (a local .safetensors/.pth/.bin, takes precedence) or ``pretrained=True`` (timm
    hub weights, honouring ``cache_dir`` and ``HF_HUB_OFFLINE``). Weights stored at another patch size or grid are
    converted at load (docs/method.md D2) by ``conversion``:

    - ``"timm"`` (default): timm's checkpoint filter, which resamples the patch kernel (e.g. 14→16) by FlexiViT's
      pseudo-inverse and the pos-embed to the ``img_size // patch_size`` grid with antialias;
    - ``"authors"`` (ViT, EVA): the authors' converter, a plain bicubic resize of the kernel and of the position
      grid (:mod:`src.models.conversions`), which the paper's adapters were trained on.

    ``pos_embed_resize``: how the position embedding follows an input whose grid differs from the stored one.
    ``"timm"`` (default): timm's bicubic, antialiased resize to the grid; ``"authors"`` (ViT family only):
    DINOv2's bicubic resize by the scale factor (g + 0.1)/√N (:func:`~src.models.conversions.scale_factor_pos_embed`).
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
        conversion: Conversion = "timm",
        pos_embed_resize: PosEmbedResize = "timm",
    ) -> None:
        super().__init__()
        if conversion not in ("timm", "authors"):
            raise ValueError(f"conversion must be 'timm' or 'authors', got {conversion!r}")
        if pos_embed_resize not in ("timm", "authors"):
            raise ValueError(f"pos_embed_resize must be 'timm' or 'authors', got {pos_embed_resize!r}")
        self.model = self._build(
            model_name, pretrained, checkpoint_path, img_size, patch_size, model_kwargs, cache_dir, conversion
        )
        #: the input size the model is built (and its position grid converted) for; the depth VFM follows it
        self.img_size = tuple(img_size) if not isinstance(img_size, int) else img_size
        family = _family_of(self.model)
        if family is None:
            raise ValueError(f"{model_name!r} builds a {type(self.model).__name__}, not a family {_supported()}")
        self._blocks = family.loop
        if pos_embed_resize == "authors":
            if family.loop is not _vit_blocks:
                family_name = type(self.model).__name__
                raise ValueError(f"pos_embed_resize='authors' is DINOv2's rule for ViTs, not for {family_name}")
            self._blocks = partial(_vit_blocks, pos_embed=_dinov2_pos_embed)
        self.conversion = conversion
        self.pos_embed_resize = pos_embed_resize
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
        conversion: Conversion = "timm",
    ) -> nn.Module:
        from src.models import weights  # the checks that tell a damaged weight file from other failures

        with_weights = pretrained or checkpoint_path is not None
        if with_weights and conversion == "authors" and _is_sam(model_name):
            raise ValueError("conversion='authors' converts ViT and EVA checkpoints; SAM's weights load unconverted")
        if conversion == "authors":
            load = partial(_create_authors, model_name)
        else:
            load = partial(_create, model_name, pretrained=True)
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
                return load(pretrained_cfg_overlay={"file": str(path)}, **kwargs)
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
            return load(cache_dir=cache_dir, **kwargs)
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
        """Keep the frozen VFM in eval mode whatever the trainer asks (docs/method.md §1.3)."""
        super().train(mode)
        self.model.eval()
        return self

    def output_shape(self) -> list[ShapeSpec]:
        """Channels and image stride of each of the maps :meth:`forward` returns."""
        return [ShapeSpec(self.embed_dim, stride) for stride in LEVEL_STRIDES]

    def no_weight_decay(self) -> set[str]:
        """None: when the VFM trains (the ``full`` baseline), all its parameters take weight decay, its norms
        included. The authors' config gives the ``backbone`` key (lr ×0.1, decay ×1) precedence over the ``norm``
        key, so the visual VFM's norm layers keep their decay (method §7.1)."""
        return set()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the activations of every block and of the adapter step after it in backward: only each one's
        input is kept. The adapter's gradient still flows through every block, and is the same."""
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
        # with grad checkpointing the adapter step is recomputed in backward too, as the blocks are (run_block):
        # only its input is kept, not the activations of its attention and MLP (an identity step needs neither)
        checkpoint_step = (
            adapter is not None
            and type(adapter).forward is not Adapter.forward
            and self.model.grad_checkpointing
            and torch.is_grad_enabled()
        )

        def step(layer: int, tokens: Tensor) -> Tensor:
            if adapter is not None:
                depth = depth_tokens[layer] if depth_tokens is not None else None
                if checkpoint_step:
                    tokens = checkpoint(adapter, tokens, layer, depth, grid, use_reentrant=False)
                else:
                    tokens = adapter(tokens, layer, depth, grid)
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
