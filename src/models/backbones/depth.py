"""Frozen depth VFM (Depth Anything V2 / Prompt Depth Anything, HF transformers) as a per-block feature source.

Only its DINOv2 encoder runs for features (method §1.2); the DPT head runs only in ``predict_depth`` for pictures.
The token grid is aligned to the visual backbone's grid as chosen in docs/method.md D1.
"""

from __future__ import annotations

import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from timm.layers import resample_patch_embed
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForDepthEstimation, PreTrainedModel

from src.models.conversions import bicubic_patch_embed, bicubic_pos_embed, scale_factor_pos_embed
from src.models.weights import hub_offline, missing_weights

#: DepthAnythingForDepthEstimation rejects a plain 'sdpa'; its DINOv2 backbone supports it (docs/method.md L3).
_ATTN = {"backbone_config": "sdpa"}


def _builtin(value: Any) -> Any:
    """Hydra hands nested DictConfig/ListConfig; HF configs need plain dicts and lists (JSON-serialisable)."""
    if isinstance(value, Mapping):
        return {str(k): _builtin(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_builtin(v) for v in value]
    return value


def _looks_like_path(name: str) -> bool:
    """A hub id is ``repo`` or ``org/repo``; anything else is meant as a local directory."""
    return name.startswith((".", "~", "/")) or name.count("/") > 1 or Path(name).expanduser().exists()


def _resample_patch(
    model: PreTrainedModel, patch: int, conversion: Literal["authors", "timm"], img_size: int | Sequence[int]
) -> None:
    """D1 ``resample_patch``: convert the encoder to patch ``patch`` at load time (docs/method.md §1.2, D1).

    ``conversion="authors"``: the authors' converter, a plain bicubic resize of the 14×14 kernel
    (:func:`~src.models.conversions.bicubic_patch_embed`) and of the stored position grid to the ``img_size //
    patch`` grid (37² → 32² for the 512 crop, :func:`~src.models.conversions.bicubic_pos_embed`).
    ``conversion="timm"``: timm's pseudo-inverse kernel resampling (``resample_patch_embed``); the stored 37² grid is
    kept and resized to each input's grid at run time. Every place HF reads the patch size (or the image size)
    is updated, so the encoder, its pos-embed interpolation and the DPT head all see the new grid.
    """
    embeddings = model.backbone.embeddings
    old = embeddings.patch_embeddings.projection
    new = nn.Conv2d(old.in_channels, old.out_channels, kernel_size=patch, stride=patch)
    with torch.no_grad():
        if conversion == "authors":
            new.weight.copy_(bicubic_patch_embed(old.weight, patch))
        else:
            new.weight.copy_(resample_patch_embed(old.weight, [patch, patch]))
        new.bias.copy_(old.bias)
    embeddings.patch_embeddings.projection = new
    embeddings.patch_embeddings.patch_size = (patch, patch)
    embeddings.patch_size = patch
    model.backbone.config.patch_size = patch
    model.config.patch_size = patch
    model.head.patch_size = patch
    if conversion == "authors":
        size = (img_size, img_size) if isinstance(img_size, int) else (int(img_size[0]), int(img_size[1]))
        grid = (size[0] // patch, size[1] // patch)
        with torch.no_grad():
            pos = bicubic_pos_embed(embeddings.position_embeddings, grid, num_prefix=1)
        embeddings.position_embeddings = nn.Parameter(pos, requires_grad=False)
        embeddings.patch_embeddings.image_size = size
        embeddings.patch_embeddings.num_patches = grid[0] * grid[1]
        model.backbone.config.image_size = size[0] if size[0] == size[1] else list(size)


def _authors_interpolate_pos_encoding(self: nn.Module, embeddings: Tensor, height: int, width: int) -> Tensor:
    """Depth Anything V2's own run-time rule (its DINOv2's ``interpolate_pos_encoding``: bicubic by the scale factor
    (g + 0.1)/√N, no antialias), bound in place of transformers' ``Dinov2Embeddings.interpolate_pos_encoding``
    (bicubic to the target grid) on one embeddings instance by :func:`use_authors_pos_embed_resize`."""
    patch_h, patch_w = self.patch_embeddings.patch_size
    grid = (height // patch_h, width // patch_w)
    return scale_factor_pos_embed(
        self.position_embeddings, grid, num_prefix=1, image_size=(height, width), dtype=embeddings.dtype
    )


def use_authors_pos_embed_resize(model: PreTrainedModel) -> None:
    """Make this model's DINOv2 encoder resize its position embedding as the authors' encoder does at run time.

    The method is replaced on this model's embeddings module only (an instance attribute bound with
    ``types.MethodType``); the class, other models and the weights are untouched. ``Dinov2Embeddings.forward``
    calls ``self.interpolate_pos_encoding(embeddings, height, width)`` and so finds the instance's method.
    """
    embeddings = model.backbone.embeddings
    if not hasattr(embeddings, "interpolate_pos_encoding") or not hasattr(embeddings, "position_embeddings"):
        raise ValueError(f"{type(embeddings).__name__} is not a DINOv2 embedding; pos_embed_resize='authors' needs one")
    embeddings.interpolate_pos_encoding = types.MethodType(_authors_interpolate_pos_encoding, embeddings)


class DepthBackbone(nn.Module):
    """Frozen Depth Anything encoder returning every block's raw patch tokens on the visual token grid.

    ``pretrained``: a hub id (``depth-anything/Depth-Anything-V2-Large-hf``, ``depth-anything/prompt-depth-anything-
    vitl-hf``) or a ``save_pretrained`` directory. ``config``: kwargs of a random-init model of ``model_type``
    (``depth_anything`` or ``prompt_depth_anything``) for tests and hub-less smoke runs. ``align``: docs/method.md D1;
    ``visual_patch_size`` is the kernel size ``resample_patch`` converts to. ``local_files_only`` defaults to
    ``HF_HUB_OFFLINE``.

    ``resample_patch`` only: ``conversion="authors"`` (default) resizes the kernel bicubically and the stored
    position grid to ``img_size // visual_patch_size`` as the authors' converter does; ``"timm"`` resamples the
    kernel with timm's pseudo-inverse and keeps the stored grid. ``pos_embed_resize``: how the encoder resizes its
    position embedding to an input's grid at run time, ``"transformers"`` (default: bicubic to the target grid) or
    ``"authors"`` (Depth Anything V2's DINOv2: bicubic by the scale factor (g + 0.1)/√N), in either ``align``.
    """

    def __init__(
        self,
        pretrained: str | None = None,
        config: dict | None = None,
        model_type: str = "depth_anything",
        align: Literal["resize_input", "resample_patch"] = "resize_input",
        cache_dir: str | None = None,
        local_files_only: bool | None = None,
        visual_patch_size: int = 16,
        conversion: Literal["authors", "timm"] = "authors",
        img_size: int | Sequence[int] = 512,
        pos_embed_resize: Literal["transformers", "authors"] = "transformers",
    ) -> None:
        super().__init__()
        if (pretrained is None) == (config is None):
            raise ValueError("give exactly one of `pretrained` (hub id or directory) and `config` (random init)")
        if align not in ("resize_input", "resample_patch"):
            raise ValueError(f"align must be 'resize_input' or 'resample_patch', got {align!r}")
        if conversion not in ("authors", "timm"):
            raise ValueError(f"conversion must be 'authors' or 'timm', got {conversion!r}")
        if pos_embed_resize not in ("transformers", "authors"):
            raise ValueError(f"pos_embed_resize must be 'transformers' or 'authors', got {pos_embed_resize!r}")
        if pretrained is not None:
            offline = hub_offline() if local_files_only is None else local_files_only
            self.model = self._load(pretrained, cache_dir, offline)
        else:
            config = _builtin(config)
            if isinstance(config.get("backbone_config"), dict):
                config["backbone_config"].setdefault("model_type", "dinov2")
            self.model = AutoModelForDepthEstimation.from_config(
                AutoConfig.for_model(model_type, **config), attn_implementation=dict(_ATTN)
            )
        if align == "resample_patch":
            _resample_patch(self.model, visual_patch_size, conversion, img_size)
        if pos_embed_resize == "authors":
            use_authors_pos_embed_resize(self.model)
        self.model.requires_grad_(False).eval()

        self.align = align
        self.conversion = conversion
        self.pos_embed_resize = pos_embed_resize
        backbone_config = self.model.backbone.config
        self.num_layers: int = backbone_config.num_hidden_layers
        self.embed_dim: int = backbone_config.hidden_size
        self.patch_size: int = backbone_config.patch_size

    @staticmethod
    def _load(pretrained: str, cache_dir: str | None, local_files_only: bool) -> PreTrainedModel:
        from src.models import weights  # the checks that tell a damaged weight file from other failures

        what = f"depth model {pretrained!r}"
        folder: Path | None = None
        if not _looks_like_path(pretrained):
            source, fetch = f"the hub id {pretrained!r}", f"--hf {pretrained}"
        elif Path(pretrained).expanduser().is_dir():
            folder = Path(pretrained).expanduser()
            pretrained, source, fetch = str(folder), "a local directory", "--hf <hub id>"
        else:
            reason = "no such directory (expected the output of `save_pretrained`)"
            raise missing_weights(what, "a local directory", "--hf <hub id>", reason, cache_dir)
        try:
            return AutoModelForDepthEstimation.from_pretrained(
                pretrained, attn_implementation=dict(_ATTN), cache_dir=cache_dir, local_files_only=local_files_only
            )
        except Exception as err:  # transformers fails deep inside on a damaged file: find out whether it is one
            snapshot = folder if folder is not None else weights.hub_snapshot(pretrained, cache_dir)
            found = weights.folder_problem(snapshot) if snapshot is not None else None
            if found is not None:
                download = f"`python {weights.DOWNLOAD_SCRIPT} {fetch} --cache-dir <dir>`"
                if folder is not None:
                    fix = (
                        "copy the complete directory again (or write it again with `save_pretrained`), or fetch "
                        f"the hub model with {download} and set pretrained=<hub id>"
                    )
                else:
                    fix = (
                        f"delete the damaged cache entry {snapshot.parents[1]} and fetch it again with "
                        f"`python {weights.DOWNLOAD_SCRIPT} {fetch} --cache-dir {snapshot.parents[2]}`"
                    )
                raise weights.corrupt_weights(what, found[0], found[1], fix) from err
            if isinstance(err, OSError):  # offline cache miss, no network, unknown repo, incomplete directory
                raise missing_weights(what, source, fetch, err, cache_dir) from err
            raise

    def train(self, mode: bool = True) -> DepthBackbone:
        """The depth VFM never trains (docs/method.md D1): stay in eval mode whatever the trainer asks."""
        super().train(mode)
        self.model.eval()
        return self

    def aligned_input(self, images: Tensor, grid: tuple[int, int]) -> Tensor:
        """The normalised image as the depth encoder must see it to emit exactly ``grid`` patch tokens."""
        target = (self.patch_size * grid[0], self.patch_size * grid[1])
        if self.align == "resample_patch":
            own = (images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size)
            if own != tuple(grid):
                raise ValueError(f"depth grid {own} != visual grid {tuple(grid)}; use the same patch size")
            return images
        if tuple(images.shape[-2:]) == target:
            return images
        return F.interpolate(images, size=target, mode="bilinear", align_corners=False)

    @torch.no_grad()
    def forward(self, images: Tensor, grid: tuple[int, int]) -> list[Tensor]:
        """Raw (pre-layernorm) output of every encoder block, prefix dropped: L_d tensors (B, g_h·g_w, C_d).

        Computed without autograd, so the visual stream uses them as constants (no grad_fn).
        """
        hidden = self.model.backbone(self.aligned_input(images, grid), output_hidden_states=True).hidden_states
        num_patches = grid[0] * grid[1]
        return [h[:, h.shape[1] - num_patches :] for h in hidden[1:]]

    @torch.no_grad()
    def predict_depth(self, images: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        """Relative depth (B, H, W) from the full model (encoder + DPT head), for visualisation only.

        With ``grid`` (the visual token grid) the model reads :meth:`aligned_input`, the input its encoder gets in
        the segmenter's depth stream (with ``align: resize_input`` a resized image, e.g. MiniDG's 64×128 → 112×224,
        the size the depth model knows), so the map shows the depth the tokens are made from; the result is resized
        back to the images' size.
        """
        inputs = images if grid is None else self.aligned_input(images, grid)
        depth = self.model(pixel_values=inputs).predicted_depth
        return F.interpolate(depth[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


def pair_depth_tokens(tokens: list[Tensor], num_layers: int, dim: int) -> list[Tensor]:
    """Map L_d depth tensors onto L_v visual layers and width ``dim`` without parameters (docs/method.md D1).

    Visual layer i reads depth layer round_half_up(i·(L_d−1)/(L_v−1)) (identity when L_d == L_v; L_v == 1 reads
    the last); channels are zero-padded or truncated to ``dim`` (SAM-H 1280 vs DA-L 1024).
    """
    depth_layers = len(tokens)
    if num_layers == 1:
        indices = [depth_layers - 1]
    else:
        span = num_layers - 1
        indices = [(2 * i * (depth_layers - 1) + span) // (2 * span) for i in range(num_layers)]
    matched = {j: _match_width(tokens[j], dim) for j in set(indices)}
    return [matched[j] for j in indices]


def _match_width(tokens: Tensor, dim: int) -> Tensor:
    width = tokens.shape[-1]
    if width == dim:
        return tokens
    return F.pad(tokens, (0, dim - width)) if width < dim else tokens[..., :dim]
