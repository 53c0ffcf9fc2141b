"""The authors' weight files (REIN and DepthForge, mmsegmentation/mmdetection) read into this code's models, and back.

Like timm's checkpoint filters, the files are recognised by their keys and renamed at load time; nothing has to be
converted by hand first. The layouts (docs/method.md §1, §2, §4, §5 describe the modules on both sides), and what
tells each apart:

- REIN training checkpoint: ``backbone.reins.*`` + ``decode_head.*`` (an mmengine ``{"meta", "state_dict"}``);
- DepthForge training checkpoint: ``backbone.depthforge.*`` + ``decode_head.*`` (with ``decode_head.DQCM.*``);
- frozen-VFM baseline checkpoint: ``decode_head.*`` alone (learned ``query_embed``/``query_feat``);
- merged full model (REIN's full-weights tool): one of the above plus ``backbone.blocks.*`` etc. (and, for
  DepthForge, ``backbone.depth_anything.*``);
- DINOv2 as the authors convert it (their ``--backbone`` file): bare ``blocks.*``, ``pos_embed``, …, kernel 16;
- Meta's ``dinov2_vitl14_pretrain.pth``: the same names, kernel 14 and a 37×37 position grid;
- DepthForge's backbone file: the DINOv2 names + ``depth_anything.pretrained.*`` + ``depth_anything.depth_head.*``;
- the original Depth Anything V2 (``depth_anything_v2_vitl.pth``): ``pretrained.*`` + ``depth_head.*``.

A checkpoint and backbone files may be given together; each part (adapter and head, visual VFM, depth VFM) must
come from exactly one of them.

Where the names go:

- the token module, ``backbone.reins.*`` / ``backbone.depthforge.*`` → ``token_adapter.*`` (the same names);
- mmdet's Mask2Former head → HF's modules in :class:`~src.models.heads.mask2former.Mask2FormerHead`
  (:data:`HEAD_RULES`): the decoder self-attention's packed ``attn.in_proj_weight`` (q, k, v) is split into HF's
  ``q_proj``/``k_proj``/``v_proj``; the cross-attention is an ``nn.MultiheadAttention`` on both sides; mmdet's
  ``norms.0/1/2`` are HF's cross-attention, self-attention and FFN norms (mmdet's order); ``level_encoding`` is the
  pixel decoder's ``level_embed``; ``cls_embed`` is ``class_predictor``; ``mask_embed.{0,2,4}`` is the mask MLP;
  DepthForge's ``DQCM.*`` is the ``refinement_decoder`` (docs/head.md);
- DINOv2 → timm's ``VisionTransformer`` (the same names; ``mask_token``, unused by the forward, is dropped as timm
  does);
- Depth Anything V2 → transformers' ``DepthAnythingForDepthEstimation`` (:data:`DEPTH_RULES`, the renaming of
  transformers' own conversion script followed by transformers' Dinov2 key renaming).

Patch sizes: a DINOv2 file at patch 14 (Meta's) is converted as the authors' converter does it, with
:func:`src.models.conversions.bicubic_patch_embed` (kernel 14 → 16) and
:func:`~src.models.conversions.bicubic_pos_embed` (37×37 → the model's grid); a file already converted for another
crop size is refused with the ``img_size`` to use. A Depth Anything encoder at patch 14 loaded into an ``align:
resample_patch`` depth backbone is converted the same way, to the grid that backbone stores (:func:`convert_depth`).

Unknown or missing keys and tensors of the wrong shape are errors that name the file, list a few keys and give the
count; a file made for another method names the ``ablation=`` to use. :func:`export_state` writes the reverse, so
that weights trained here go back into the authors' tools (``scripts/export_checkpoint.py``).
"""

from __future__ import annotations

import copy
import logging
import math
import pickle
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, open_dict
from torch import Tensor, nn

from src.utils.checkpoint import CheckpointError, torch_load_problem

log = logging.getLogger(__name__)

#: the adapter's prefix in the authors' files, by method
ADAPTER_PREFIX = {"rein": "backbone.reins.", "depthforge": "backbone.depthforge."}
#: the ``ablation=`` config that builds the model each kind of file holds
ABLATION = {"rein": "rein", "depthforge": "depthforge", "frozen": "frozen"}
#: what each kind of file is, in words
KIND_NAME = {
    "rein": "the authors' REIN model",
    "depthforge": "the authors' DepthForge model",
    "frozen": "the authors' frozen-VFM baseline",
}
#: tensors of ours that no file holds because the model config fixes them (the no-object class weight of the loss)
DERIVED = ("mask_head.criterion.",)


class AuthorsCheckpointError(CheckpointError):
    """An authors' weight file that cannot be used: unknown layout, unknown or missing keys, or another model."""


# --------------------------------------------------------------------------- renaming rules

_FIELDS = {"{i}": r"(?P<i>\d+)", "{p}": r"(?P<p>weight|bias)"}


def _regex(template: str) -> re.Pattern[str]:
    """``blocks.{i}.norm1.{p}`` → a regex with an index ``i`` and a parameter kind ``p`` (weight or bias)."""
    return re.compile("".join(_FIELDS.get(part, re.escape(part)) for part in re.split(r"(\{[ip]\})", template)))


@dataclass(frozen=True)
class Rule:
    """One of the authors' names and ours. Several names of ours split one packed tensor of theirs in equal parts
    along dim 0, in order (an attention's q, k, v)."""

    theirs: str
    ours: tuple[str, ...]
    theirs_regex: re.Pattern[str] = field(init=False, repr=False, compare=False)
    ours_regex: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "theirs_regex", _regex(self.theirs))
        object.__setattr__(self, "ours_regex", tuple(_regex(name) for name in self.ours))


def _rules(*pairs: tuple[str, str | tuple[str, ...]]) -> tuple[Rule, ...]:
    return tuple(Rule(theirs, (ours,) if isinstance(ours, str) else ours) for theirs, ours in pairs)


_PD, _TD = "mask_head.pixel_decoder.", "mask_head.transformer_module.decoder."

#: mmdet's ``Mask2FormerHead`` (names after ``decode_head.``) → ours (names in the Segmenter)
HEAD_RULES = _rules(
    ("pixel_decoder.input_convs.{i}.conv.{p}", _PD + "input_projections.{i}.0.{p}"),
    ("pixel_decoder.input_convs.{i}.gn.{p}", _PD + "input_projections.{i}.1.{p}"),
    *(
        (
            f"pixel_decoder.encoder.layers.{{i}}.self_attn.{name}.{{p}}",
            _PD + f"encoder.layers.{{i}}.self_attn.{name}.{{p}}",
        )
        for name in ("sampling_offsets", "attention_weights", "value_proj", "output_proj")
    ),
    ("pixel_decoder.encoder.layers.{i}.ffn.layers.0.0.{p}", _PD + "encoder.layers.{i}.fc1.{p}"),
    ("pixel_decoder.encoder.layers.{i}.ffn.layers.1.{p}", _PD + "encoder.layers.{i}.fc2.{p}"),
    ("pixel_decoder.encoder.layers.{i}.norms.0.{p}", _PD + "encoder.layers.{i}.self_attn_layer_norm.{p}"),
    ("pixel_decoder.encoder.layers.{i}.norms.1.{p}", _PD + "encoder.layers.{i}.final_layer_norm.{p}"),
    ("pixel_decoder.level_encoding.weight", _PD + "level_embed"),
    ("pixel_decoder.lateral_convs.0.conv.weight", _PD + "adapter_1.0.weight"),
    ("pixel_decoder.lateral_convs.0.gn.{p}", _PD + "adapter_1.1.{p}"),
    ("pixel_decoder.output_convs.0.conv.weight", _PD + "layer_1.0.weight"),
    ("pixel_decoder.output_convs.0.gn.{p}", _PD + "layer_1.1.{p}"),
    ("pixel_decoder.mask_feature.{p}", _PD + "mask_projection.{p}"),
    ("transformer_decoder.layers.{i}.cross_attn.attn.in_proj_{p}", _TD + "layers.{i}.cross_attn.in_proj_{p}"),
    ("transformer_decoder.layers.{i}.cross_attn.attn.out_proj.{p}", _TD + "layers.{i}.cross_attn.out_proj.{p}"),
    (
        "transformer_decoder.layers.{i}.self_attn.attn.in_proj_{p}",
        tuple(_TD + f"layers.{{i}}.self_attn.{x}_proj.{{p}}" for x in "qkv"),
    ),
    ("transformer_decoder.layers.{i}.self_attn.attn.out_proj.{p}", _TD + "layers.{i}.self_attn.out_proj.{p}"),
    ("transformer_decoder.layers.{i}.ffn.layers.0.0.{p}", _TD + "layers.{i}.fc1.{p}"),
    ("transformer_decoder.layers.{i}.ffn.layers.1.{p}", _TD + "layers.{i}.fc2.{p}"),
    # mmdet's layer: cross-attention, norms.0, self-attention, norms.1, FFN, norms.2
    ("transformer_decoder.layers.{i}.norms.0.{p}", _TD + "layers.{i}.cross_attn_layer_norm.{p}"),
    ("transformer_decoder.layers.{i}.norms.1.{p}", _TD + "layers.{i}.self_attn_layer_norm.{p}"),
    ("transformer_decoder.layers.{i}.norms.2.{p}", _TD + "layers.{i}.final_layer_norm.{p}"),
    ("transformer_decoder.post_norm.{p}", _TD + "layernorm.{p}"),
    ("level_embed.weight", "mask_head.transformer_module.level_embed.weight"),
    ("cls_embed.{p}", "mask_head.class_predictor.{p}"),
    ("mask_embed.0.{p}", _TD + "mask_predictor.mask_embedder.0.0.{p}"),
    ("mask_embed.2.{p}", _TD + "mask_predictor.mask_embedder.1.0.{p}"),
    ("mask_embed.4.{p}", _TD + "mask_predictor.mask_embedder.2.0.{p}"),
    ("querys2feat.{p}", "mask_head.querys2feat.{p}"),
    ("query_embed.weight", "mask_head.query_embed.weight"),
    ("query_feat.weight", "mask_head.query_feat.weight"),
    # DepthForge's refinement decoder ("DynamicQueryCorrectionModule", docs/method.md §4.1)
    ("DQCM.attention_gate.channel_attention.0.{p}", "refinement_decoder.channel_attention.0.{p}"),
    ("DQCM.attention_gate.channel_attention.2.{p}", "refinement_decoder.channel_attention.2.{p}"),
    ("DQCM.attention_gate.spatial_attention.{p}", "refinement_decoder.spatial_attention.0.{p}"),
    ("DQCM.linear_fuse.{p}", "refinement_decoder.fuse.{p}"),
)

#: the token module (names after ``backbone.reins.`` / ``backbone.depthforge.``): the same names under ours
ADAPTER_RULES = _rules(
    *((name, f"token_adapter.{name}") for name in ("scale", "learnable_tokens", "learnable_tokens_a")),
    ("learnable_tokens_b", "token_adapter.learnable_tokens_b"),
    *(
        (f"{name}.{{p}}", f"token_adapter.{name}.{{p}}")
        for name in ("mlp_token2feat", "mlp_delta_f", "transform", "merge")
    ),
)

#: DINOv2 (Meta's names, also the authors' converted files) → timm's VisionTransformer (the same names)
VISUAL_RULES = _rules(
    *((name, name) for name in ("cls_token", "pos_embed", "patch_embed.proj.{p}", "norm.{p}")),
    *(
        (f"blocks.{{i}}.{name}", f"blocks.{{i}}.{name}")
        for name in (
            "norm1.{p}",
            "attn.qkv.{p}",
            "attn.proj.{p}",
            "ls1.gamma",
            "norm2.{p}",
            "mlp.fc1.{p}",
            "mlp.fc2.{p}",
            "ls2.gamma",
        )
    ),
)
#: DINOv2 keys that timm's model has no tensor for (the masked-image-modelling token, unused by the forward)
VISUAL_UNUSED = ("mask_token",)

_EMB, _LAYER, _NECK = "backbone.embeddings.", "backbone.encoder.layer.{i}.", "neck."
#: original Depth Anything V2 → transformers' DepthAnythingForDepthEstimation: transformers' conversion script
#: (``convert_depth_anything_to_hf.py``) followed by the Dinov2 key renaming transformers applies when loading
#: (``attention.attention.query`` → ``attention.q_proj``, ``attention.output.dense`` → ``attention.o_proj``)
DEPTH_RULES = _rules(
    ("pretrained.cls_token", _EMB + "cls_token"),
    ("pretrained.mask_token", _EMB + "mask_token"),
    ("pretrained.pos_embed", _EMB + "position_embeddings"),
    ("pretrained.patch_embed.proj.{p}", _EMB + "patch_embeddings.projection.{p}"),
    ("pretrained.blocks.{i}.ls1.gamma", _LAYER + "layer_scale1.lambda1"),
    ("pretrained.blocks.{i}.ls2.gamma", _LAYER + "layer_scale2.lambda1"),
    ("pretrained.blocks.{i}.norm1.{p}", _LAYER + "norm1.{p}"),
    ("pretrained.blocks.{i}.norm2.{p}", _LAYER + "norm2.{p}"),
    ("pretrained.blocks.{i}.mlp.fc1.{p}", _LAYER + "mlp.fc1.{p}"),
    ("pretrained.blocks.{i}.mlp.fc2.{p}", _LAYER + "mlp.fc2.{p}"),
    ("pretrained.blocks.{i}.attn.proj.{p}", _LAYER + "attention.o_proj.{p}"),
    ("pretrained.blocks.{i}.attn.qkv.{p}", tuple(_LAYER + f"attention.{x}_proj.{{p}}" for x in "qkv")),
    ("pretrained.norm.{p}", "backbone.layernorm.{p}"),
    ("depth_head.projects.{i}.{p}", _NECK + "reassemble_stage.layers.{i}.projection.{p}"),
    ("depth_head.resize_layers.{i}.{p}", _NECK + "reassemble_stage.layers.{i}.resize.{p}"),
    # refinenet1..4 are HF's fusion layers 3..0
    *(
        (f"depth_head.scratch.refinenet{n}.{theirs}.{{p}}", _NECK + f"fusion_stage.layers.{4 - n}.{ours}.{{p}}")
        for n in range(1, 5)
        for theirs, ours in (
            ("out_conv", "projection"),
            ("resConfUnit1.conv1", "residual_layer1.convolution1"),
            ("resConfUnit1.conv2", "residual_layer1.convolution2"),
            ("resConfUnit2.conv1", "residual_layer2.convolution1"),
            ("resConfUnit2.conv2", "residual_layer2.convolution2"),
        )
    ),
    *((f"depth_head.scratch.layer{n}_rn.weight", _NECK + f"convs.{n - 1}.weight") for n in range(1, 5)),
    ("depth_head.scratch.output_conv1.{p}", "head.conv1.{p}"),
    ("depth_head.scratch.output_conv2.0.{p}", "head.conv2.{p}"),
    ("depth_head.scratch.output_conv2.2.{p}", "head.conv3.{p}"),
)


def rename(state: Mapping[str, Tensor], rules: Iterable[Rule], prefix: str = "") -> tuple[dict[str, Tensor], list[str]]:
    """The authors' names → ours by ``rules`` (packed tensors split); returns (renamed, keys no rule knows).

    ``prefix`` is put before every name of ours.
    """
    rules = tuple(rules)
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in state.items():
        for rule in rules:
            found = rule.theirs_regex.fullmatch(key)
            if found is None:
                continue
            names = [prefix + name.format(**found.groupdict()) for name in rule.ours]
            parts = [value] if len(names) == 1 else value.chunk(len(names), dim=0)
            out.update(zip(names, parts))
            break
        else:
            unknown.append(key)
    return out, unknown


def rename_back(
    state: Mapping[str, Tensor], rules: Iterable[Rule], prefix: str = ""
) -> tuple[dict[str, Tensor], list[str]]:
    """Ours → the authors' names, packing split tensors again; returns (renamed, our keys no rule knows)."""
    rules = tuple(rules)
    pieces: dict[str, dict[int, Tensor]] = {}
    sizes: dict[str, int] = {}
    unknown: list[str] = []
    for key, value in state.items():
        for rule in rules:
            hit = next(
                ((j, m) for j, pattern in enumerate(rule.ours_regex) if (m := pattern.fullmatch(key)) is not None), None
            )
            if hit is None:
                continue
            j, found = hit
            theirs = prefix + rule.theirs.format(**found.groupdict())
            pieces.setdefault(theirs, {})[j] = value
            sizes[theirs] = len(rule.ours)
            break
        else:
            unknown.append(key)
    out = {}
    for theirs, parts in pieces.items():
        if len(parts) != sizes[theirs]:
            raise AuthorsCheckpointError(f"cannot pack {theirs}: only parts {sorted(parts)} of {sizes[theirs]} exist")
        out[theirs] = parts[0] if sizes[theirs] == 1 else torch.cat([parts[j] for j in range(sizes[theirs])], dim=0)
    return out, unknown


# --------------------------------------------------------------------------- reading files


def _listing(keys: Iterable[str], limit: int = 6) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return f"{shown}, … ({len(keys)} in all)" if len(keys) > limit else shown


def _unpickling_problem(err: BaseException) -> str:
    found = re.search(r"GLOBAL (\S+) was not an allowed global", str(err))
    what = f"a pickled `{found.group(1)}` object" if found else "pickled Python objects"
    return (
        f"besides tensors it holds {what}, which safe loading refuses to unpickle (an mmengine training checkpoint "
        "also keeps pickled logging state). Do not load it with safe loading turned off: unpickling a file of "
        "unknown origin can run arbitrary code. The authors' released checkpoints hold tensors only and load as "
        "they are; for a checkpoint of your own mmengine run, save its 'state_dict' (a dict of tensors) to a new "
        "file in the environment that wrote it"
    )


def read_weight_file(path: str | Path) -> dict[str, Any]:
    """A weight file's contents, loaded safely: ``.safetensors``, or ``torch.load(weights_only=True)`` (memory-mapped
    when the file allows it, so that a large backbone file is not read twice). Errors name the file."""
    path = Path(path).expanduser()
    fix = (
        "  fix: point ckpt_path at a depthforge checkpoint (<run dir>/checkpoints/last.ckpt) or at one of the "
        "authors' REIN/DepthForge weight files (.pth of tensors, or .safetensors)"
    )
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory, not a file\n{fix}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}\n{fix}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:  # a legacy (pre-zip) torch.save file cannot be memory-mapped
            if "mmap" not in str(err):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        if isinstance(err, pickle.UnpicklingError) and re.search(r"GLOBAL \S+ was not an allowed global", str(err)):
            problem = _unpickling_problem(err)
        elif path.suffix == ".safetensors":
            problem = f"it is not a readable safetensors file ({type(err).__name__}: {str(err).splitlines()[0]})"
        else:
            problem = torch_load_problem(path, err)
        raise CheckpointError(
            f"cannot load checkpoint {path} ({path.stat().st_size:,} bytes): {problem}.\n{fix}; a truncated copy "
            "or download must be copied again"
        ) from err


_NOT_A_CHECKPOINT_FIX = (
    "point ckpt_path at a run's checkpoint (<run dir>/checkpoints/last.ckpt) or at the authors' REIN/DepthForge "
    "file (docs/reproduction.md)"
)


def is_depthforge_checkpoint(content: Any) -> bool:
    """Whether a loaded file is one of this code's Lightning checkpoints (not one of the authors' files)."""
    if not isinstance(content, Mapping):
        return False
    if "model_config" in content:
        return True
    state = content.get("state_dict")
    return isinstance(state, Mapping) and any(str(k).startswith("segmenter.") for k in state)


def tensors_of(content: Any, source: str) -> dict[str, Tensor]:
    """The flat name → tensor dict of a loaded weight file: mmengine's ``{"meta", "state_dict"}`` or a bare dict."""
    if isinstance(content, Mapping) and isinstance(content.get("state_dict"), Mapping):
        content = content["state_dict"]
    if not isinstance(content, Mapping) or not content:
        raise AuthorsCheckpointError(
            f"{source} is not a depthforge checkpoint (it has no 'model_config') nor one of the authors' weight files: "
            f"it holds no state dict (found {type(content).__name__})\n  fix: {_NOT_A_CHECKPOINT_FIX}"
        )
    others = [str(k) for k, v in content.items() if not isinstance(v, Tensor)]
    if others:
        raise AuthorsCheckpointError(
            f"{source} is not a depthforge checkpoint (it has no 'model_config') nor one of the authors' weight files "
            f"(a state dict of tensors): {_listing(others)} are not tensors\n  fix: {_NOT_A_CHECKPOINT_FIX}"
        )
    return {str(k): v for k, v in content.items()}


# --------------------------------------------------------------------------- the parts of a file


@dataclass
class AuthorsWeights:
    """The authors' files of one model, renamed to ours (unconverted). Each part records the file it came from.

    ``kind``: ``"rein"``, ``"depthforge"`` or ``"frozen"`` when a file holds the trainable part, else None.
    ``trainable``: Segmenter names (``token_adapter.*``, ``refinement_decoder.*``, ``mask_head.*``);
    ``visual``: names in timm's model (``visual_backbone.model``); ``depth``: names in transformers' model
    (``depth_backbone.model``).
    """

    kind: str | None = None
    trainable: dict[str, Tensor] = field(default_factory=dict)
    visual: dict[str, Tensor] = field(default_factory=dict)
    depth: dict[str, Tensor] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)
    layouts: list[str] = field(default_factory=list)

    def merge(self, other: AuthorsWeights) -> None:
        for part in ("trainable", "visual", "depth"):
            mine, theirs = getattr(self, part), getattr(other, part)
            if mine and theirs:
                raise AuthorsCheckpointError(
                    f"two files hold the {_PART_NAME[part]}: {self.origin[part]} and {other.origin[part]}\n"
                    "  fix: give each part once (ckpt_path: the adapter and head; backbone_ckpt: the backbones)"
                )
            if theirs:
                mine.update(theirs)
                self.origin[part] = other.origin[part]
        self.kind = self.kind or other.kind
        self.layouts += other.layouts

    # ------------------------------------------------------------------ use in the entry points
    def architecture(self, cfg: DictConfig) -> DictConfig:
        """``cfg`` with the VFMs these files replace built without their pretrained weights (nothing is fetched)."""
        cfg = copy.deepcopy(cfg)
        segmenter = cfg.model.segmenter
        if self.visual:
            with open_dict(segmenter.visual_backbone):
                segmenter.visual_backbone.pretrained = False
                segmenter.visual_backbone.checkpoint_path = None
        depth = segmenter.get("depth_backbone")
        if self.depth and depth is not None and depth.get("pretrained") is not None:
            if depth.get("model_type", "depth_anything") != "depth_anything":
                raise AuthorsCheckpointError(
                    f"{self.origin['depth']} holds Depth Anything V2 weights, but the config builds a "
                    f"{depth.model_type!r} depth model\n  fix: model/depth=da_v2_l"
                )
            with open_dict(depth):
                depth.pretrained = None
                depth.config = depth_anything_config(self.depth, self.origin["depth"])
        return cfg

    def load_into(self, segmenter: nn.Module) -> None:
        """Check these weights against ``segmenter`` and copy them in (see :func:`prepare`)."""
        prepared = prepare(segmenter, self)
        load_prepared(segmenter, prepared)
        log.info("loaded the authors' weights: %s", "; ".join(self.layouts))
        has_depth = getattr(segmenter, "depth_backbone", None) is not None
        if self.depth and not has_depth:
            log.info("this model has no depth VFM: the Depth Anything weights of %s are not used", self.origin["depth"])
        missing = [_PART_NAME["visual"]] if not self.visual else []
        missing += [_PART_NAME["depth"]] if has_depth and not self.depth else []
        if missing:
            log.warning(
                "no file given holds the %s: it comes from the source the model config names; the authors evaluate "
                "with their backbone file, which backbone_ckpt=<file> loads",
                " or the ".join(missing),
            )


_PART_NAME = {
    "trainable": "adapter and head",
    "visual": "visual VFM (DINOv2)",
    "depth": "depth VFM (Depth Anything V2)",
}


def _file_kind(adapter: dict[str, dict[str, Tensor]], head: dict[str, Tensor], source: str) -> str | None:
    if len(adapter) > 1:
        raise AuthorsCheckpointError(f"{source} holds both a REIN and a DepthForge token module")
    if adapter:
        return next(iter(adapter))
    return "frozen" if head else None


def describe(weights: AuthorsWeights) -> str:
    """A file's layout in words, from the parts it holds."""
    parts = []
    if weights.kind:
        parts.append(f"{KIND_NAME[weights.kind]}'s trained tensors")
    kernel = weights.visual.get("patch_embed.proj.weight")
    if kernel is not None:
        origin = "Meta's original" if kernel.shape[-1] == 14 else "converted by the authors"
        parts.append(f"DINOv2 ({origin}, patch {kernel.shape[-1]})")
    kernel = weights.depth.get(_EMB + "patch_embeddings.projection.weight")
    if kernel is not None:
        origin = "original" if kernel.shape[-1] == 14 else "converted by the authors"
        parts.append(f"Depth Anything V2 ({origin}, patch {kernel.shape[-1]})")
    return " + ".join(parts) or "incomplete backbone weights"


def from_state_dict(state: Mapping[str, Tensor], source: str) -> AuthorsWeights:
    """Recognise the authors' layout of one file by its keys and rename it to ours; unknown keys are an error."""
    adapter: dict[str, dict[str, Tensor]] = {}
    head, visual, depth = {}, {}, {}
    for key, value in state.items():
        if key.startswith("decode_head."):
            head[key.removeprefix("decode_head.")] = value
        elif kind := next((k for k, prefix in ADAPTER_PREFIX.items() if key.startswith(prefix)), None):
            adapter.setdefault(kind, {})[key.removeprefix(ADAPTER_PREFIX[kind])] = value
        elif key.startswith(("backbone.depth_anything.", "depth_anything.")):
            depth[key.split("depth_anything.", 1)[1]] = value
        elif key.startswith("backbone."):
            visual[key.removeprefix("backbone.")] = value
        elif key.startswith(("pretrained.", "depth_head.")):
            depth[key] = value
        else:
            visual[key] = value  # a bare backbone file; what is not DINOv2 is reported below
    weights = AuthorsWeights(kind=_file_kind(adapter, head, source))
    unknown: list[str] = []
    if weights.kind:
        renamed, left = rename(head, HEAD_RULES)
        unknown += [f"decode_head.{k}" for k in left]
        weights.trainable.update(renamed)
        for kind, tensors in adapter.items():
            renamed, left = rename(tensors, ADAPTER_RULES)
            unknown += [ADAPTER_PREFIX[kind] + k for k in left]
            weights.trainable.update(renamed)
    bare = not any(k.startswith("backbone.") for k in state)
    for key in VISUAL_UNUSED:
        visual.pop(key, None)
    weights.visual, left = rename(visual, VISUAL_RULES)
    unknown += [k if bare else f"backbone.{k}" for k in left]
    weights.depth, left = rename(depth, DEPTH_RULES)
    unknown += left
    if unknown:
        raise AuthorsCheckpointError(
            f"{source}: {len(unknown)} of its {len(state)} keys fit none of the authors' layouts this import knows "
            f"(REIN/DepthForge checkpoints, DINOv2, Depth Anything V2): {_listing(sorted(unknown))}\n"
            "  fix: give the authors' files as written by their code, or one of this code's checkpoints"
        )
    if not (weights.kind or weights.visual or weights.depth):
        raise AuthorsCheckpointError(f"{source} holds no weights")
    for part in ("trainable", "visual", "depth"):
        if getattr(weights, part):
            weights.origin[part] = source
    weights.layouts.append(f"{source}: {describe(weights)}")
    return weights


def read_authors(*paths: str | Path | None, contents: Mapping[str, Any] | None = None) -> AuthorsWeights:
    """Read and rename the authors' files of one model (a part may come from any of them, but only once).

    ``contents``: files already read with :func:`read_weight_file`, by the path given.
    """
    weights = AuthorsWeights()
    for path in paths:
        if path is None or path == "":
            continue
        content = (contents or {}).get(str(path))
        content = read_weight_file(path) if content is None else content
        if is_depthforge_checkpoint(content):
            raise AuthorsCheckpointError(
                f"{path} is a depthforge checkpoint, not one of the authors' files\n"
                "  fix: give it as ckpt_path alone (backbone_ckpt is for the authors' backbone files)"
            )
        weights.merge(from_state_dict(tensors_of(content, str(path)), str(path)))
    return weights


def _paths(value: Any) -> list[str]:
    """``backbone_ckpt`` as a list of paths: one path, or several (``[dinov2.pth,depth_anything.pth]``)."""
    if value is None or value == "":
        return []
    if isinstance(value, (str, Path)):
        return [str(value)]
    return [str(v) for v in value]


def open_checkpoint(ckpt_path: str | Path, backbone_ckpt: Any = None) -> tuple[Any, AuthorsWeights | None]:
    """What the entry points were given: (the depthforge checkpoint's contents, None) or (None, the authors' files).

    ``backbone_ckpt``: the authors' backbone file(s) beside their training checkpoint ``ckpt_path``: their
    converted file, or the originals (Meta's DINOv2 and, for DepthForge, Depth Anything V2) as a list. Reading
    happens here, before any model is built, so a missing or damaged file fails at once.
    """
    backbones = _paths(backbone_ckpt)
    content = read_weight_file(ckpt_path)
    if is_depthforge_checkpoint(content):
        if backbones:
            raise CheckpointError(
                f"backbone_ckpt={backbone_ckpt} is for the authors' weight files, but ckpt_path={ckpt_path} is a "
                "depthforge checkpoint, whose VFMs come from the model config\n  fix: drop backbone_ckpt (a local "
                "DINOv2 file goes to model.segmenter.visual_backbone.checkpoint_path)"
            )
        return content, None
    weights = read_authors(ckpt_path, *backbones, contents={str(ckpt_path): content})
    if not weights.kind:
        raise AuthorsCheckpointError(
            f"ckpt_path={ckpt_path} holds only backbone weights ({'; '.join(weights.layouts)}), no adapter or head\n"
            "  fix: ckpt_path=<the authors' trained checkpoint> backbone_ckpt=<this file>"
        )
    return None, weights


# --------------------------------------------------------------------------- matching a model


def kind_of(segmenter: nn.Module) -> str | None:
    """Which of the authors' models ``segmenter`` is (``rein``, ``depthforge``, ``frozen``), or None if none."""
    from src.models.adapters.base import IdentityAdapter
    from src.models.adapters.depthforge import DepthForgeAdapter
    from src.models.adapters.rein import ReinAdapter
    from src.models.decoders.drd import DepthRefinementDecoder

    adapter, decoder = segmenter.token_adapter, segmenter.refinement_decoder
    if isinstance(adapter, ReinAdapter) and not isinstance(adapter.scale, nn.Parameter):
        return None  # s ≡ 1 (the no-scale ablation): the authors' module always has a learnable s
    if type(adapter) is ReinAdapter and decoder is None:
        return "rein"
    implemented = type(decoder) is DepthRefinementDecoder and decoder.variant == "implemented"
    if type(adapter) is DepthForgeAdapter and implemented:
        return "depthforge"
    if type(adapter) is IdentityAdapter and decoder is None and not segmenter.mask_head.replace_query_feat:
        return "frozen"
    return None


def _describe_model(segmenter: nn.Module) -> str:
    decoder = segmenter.refinement_decoder
    with_decoder = f"the {decoder.variant!r} refinement decoder" if decoder is not None else "no refinement decoder"
    return f"{type(segmenter.token_adapter).__name__} with {with_decoder}"


def _check_shapes(ours: Mapping[str, Tensor], given: Mapping[str, Tensor], what: str, source: str) -> None:
    bad = [k for k, v in given.items() if k in ours and tuple(v.shape) != tuple(ours[k].shape)]
    if bad:
        shown = "; ".join(f"{k}: file {tuple(given[k].shape)}, model {tuple(ours[k].shape)}" for k in bad[:4])
        raise AuthorsCheckpointError(
            f"{source}: {len(bad)} tensor(s) of the {what} do not fit this model's shapes: {shown}"
            f"{' …' if len(bad) > 4 else ''}\n  fix: use the configuration the file was trained with (the "
            "authors' models are DINOv2-L with the full Mask2Former head: model/backbone=dinov2_l "
            "model/head=mask2former, and model/depth=da_v2_l for DepthForge)"
        )


def _check_keys(ours: Iterable[str], given: Iterable[str], what: str, source: str, theirs: str) -> None:
    ours, given = set(ours), set(given)
    missing, extra = sorted(ours - given), sorted(given - ours)
    if missing or extra:
        lines = [f"{source} does not hold exactly the {what} this model has:"]
        if missing:
            lines.append(f"  missing (this model's names): {_listing(missing)}")
        if extra:
            lines.append(f"  unexpected (this model's names): {_listing(extra)}")
        lines.append(f"  fix: give the {theirs} that belongs to this configuration")
        raise AuthorsCheckpointError("\n".join(lines))


def _grid(tokens: int, num_prefix: int) -> int:
    side = math.isqrt(tokens - num_prefix)
    return side if side * side == tokens - num_prefix else -1


def convert_visual(state: Mapping[str, Tensor], model: nn.Module, source: str) -> dict[str, Tensor]:
    """A DINOv2 state (timm names) made to fit timm ``model``: Meta's patch-14 file is converted as the authors'
    converter does it (bicubic kernel 14 → the model's patch, bicubic position grid → the model's grid)."""
    out = dict(state)
    kernel, pos = state.get("patch_embed.proj.weight"), state.get("pos_embed")
    if kernel is None or pos is None:
        return out  # reported as missing by the key check
    want = tuple(model.patch_embed.proj.weight.shape[-2:])
    grid = tuple(model.patch_embed.grid_size)
    prefix = model.num_prefix_tokens
    if tuple(kernel.shape[-2:]) != want:
        from src.models.conversions import bicubic_patch_embed, bicubic_pos_embed

        out["patch_embed.proj.weight"] = bicubic_patch_embed(kernel, want[0])
        out["pos_embed"] = bicubic_pos_embed(pos, grid, num_prefix=prefix)
        log.info(
            "%s: DINOv2 converted at load time as the authors do: kernel %s → %s, position grid %s → %s (bicubic)",
            source,
            tuple(kernel.shape[-2:]),
            want,
            _grid(pos.shape[1], prefix),
            grid,
        )
    elif pos.shape[1] != model.pos_embed.shape[1]:
        side = _grid(pos.shape[1], prefix)
        raise AuthorsCheckpointError(
            f"{source}: its DINOv2 was converted for a {side}×{side} token grid ({side * want[0]}-pixel crops), "
            f"this model is built for {grid[0]}×{grid[1]}\n  fix: model.segmenter.visual_backbone.img_size="
            f"{side * want[0]} (and model.slide.crop={side * want[0]}), or the converted file for "
            f"{grid[0] * want[0]}-pixel crops"
        )
    return out


def convert_depth(state: Mapping[str, Tensor], depth_backbone: nn.Module, source: str) -> dict[str, Tensor]:
    """A Depth Anything state (HF names) made to fit ``depth_backbone``. A patch-14 encoder (the original file)
    loaded into an ``align: resample_patch`` model is converted as the authors' converter does it: the kernel
    resized bicubically to the model's patch, the position grid resized bicubically to the grid the model stores.
    A file whose kernel already fits keeps its own grid (the model then stores that grid and resizes it at run
    time by its configured rule); for an authors' file converted for the model's crop size the grids agree."""
    out = dict(state)
    kernel_name, position_name = _EMB + "patch_embeddings.projection.weight", _EMB + "position_embeddings"
    kernel, position = state.get(kernel_name), state.get(position_name)
    if kernel is None or position is None:
        return out  # reported as missing by the key check
    embeddings = depth_backbone.model.backbone.embeddings
    want = embeddings.patch_embeddings.projection.weight.shape[-1]
    have = kernel.shape[-1]
    if have == want:
        return out
    if depth_backbone.align != "resample_patch":
        raise AuthorsCheckpointError(
            f"{source}: its Depth Anything encoder has patch {have}, but this depth backbone keeps patch {want} "
            f"(align={depth_backbone.align})\n  fix: model.segmenter.depth_backbone.align=resample_patch (the "
            "authors' depth encoder at the visual patch size)"
        )
    from src.models.conversions import bicubic_patch_embed, bicubic_pos_embed

    out[kernel_name] = bicubic_patch_embed(kernel, want)
    stored = embeddings.position_embeddings.shape[1]
    side, file_side = _grid(stored, 1), _grid(position.shape[1], 1)
    if stored != position.shape[1] and side > 0 and file_side > 0:
        out[position_name] = bicubic_pos_embed(position, (side, side), num_prefix=1)
    log.info(
        "%s: Depth Anything converted at load time as the authors do: kernel %d → %d, position grid %s → %s (bicubic)",
        source,
        have,
        want,
        file_side,
        _grid(out[position_name].shape[1], 1),
    )
    return out


def _derived(name: str) -> bool:
    return name.startswith(DERIVED)


def prepare(segmenter: nn.Module, weights: AuthorsWeights) -> dict[str, dict[str, Tensor]]:
    """The tensors to copy into ``segmenter``, by part, after every check: the file is of this method, no key is
    missing or left over, every shape fits (position grids converted where needed). Works on the meta device."""
    if weights.kind and weights.kind != kind_of(segmenter):
        raise AuthorsCheckpointError(
            f"{weights.origin['trainable']} holds {KIND_NAME[weights.kind]}, but this config builds "
            f"{_describe_model(segmenter)}\n  fix: add ablation={ABLATION[weights.kind]} to the command line"
        )
    prepared: dict[str, dict[str, Tensor]] = {}
    if weights.trainable:
        frozen = ("visual_backbone.", "depth_backbone.")
        ours = {
            k: v for k, v in segmenter.trainable_state_dict().items() if not _derived(k) and not k.startswith(frozen)
        }
        source = weights.origin["trainable"]
        _check_shapes(ours, weights.trainable, "adapter and head", source)
        _check_keys(ours, weights.trainable, "adapter and head tensors", source, "training checkpoint")
        if getattr(segmenter, "train_backbone", False) and not weights.visual:
            raise AuthorsCheckpointError(
                f"{source}: this model fine-tunes its visual VFM (train_backbone), but no file given holds it\n"
                "  fix: the checkpoint of the fine-tuned model holds backbone.* too; give that file"
            )
        prepared["trainable"] = dict(weights.trainable)
    if weights.visual:
        model = segmenter.visual_backbone.model
        source = weights.origin["visual"]
        converted = convert_visual(weights.visual, model, source)
        ours = model.state_dict()
        _check_shapes(ours, converted, "visual VFM (DINOv2)", source)
        _check_keys(ours, converted, "visual VFM tensors", source, "DINOv2 file")
        prepared["visual"] = converted
    depth_backbone = getattr(segmenter, "depth_backbone", None)
    if weights.depth and depth_backbone is not None:
        source = weights.origin["depth"]
        converted = convert_depth(weights.depth, depth_backbone, source)
        ours = depth_backbone.model.state_dict()
        # the position grid is kept as the file has it (transformers resizes it at run time): only its width counts
        position = _EMB + "position_embeddings"
        shapes = {k: v for k, v in converted.items() if k != position}
        if position in converted and _grid(converted[position].shape[1], 1) < 0:
            shapes[position] = converted[position]  # not a square grid plus cls: reported as a misfit
        elif position in converted:
            shapes[position] = converted[position][:, :1]
            ours = {**ours, position: ours[position][:, :1]}
        _check_shapes(ours, shapes, "depth VFM (Depth Anything V2)", source)
        _check_keys(ours, converted, "depth VFM tensors", source, "Depth Anything file")
        prepared["depth"] = converted
    return prepared


def load_prepared(segmenter: nn.Module, prepared: Mapping[str, Mapping[str, Tensor]]) -> None:
    """Copy what :func:`prepare` returned into ``segmenter``."""
    if "trainable" in prepared:
        derived = {k: v for k, v in segmenter.trainable_state_dict().items() if _derived(k)}
        frozen_trainable = {
            k: v for k, v in segmenter.trainable_state_dict().items() if k.startswith("visual_backbone.")
        }
        segmenter.load_trainable_state_dict({**prepared["trainable"], **derived, **frozen_trainable})
    if "visual" in prepared:
        segmenter.visual_backbone.model.load_state_dict(dict(prepared["visual"]), strict=True)
    if "depth" in prepared:
        model = segmenter.depth_backbone.model
        embeddings = model.backbone.embeddings
        position = prepared["depth"].get(_EMB + "position_embeddings")
        if position is not None and position.shape != embeddings.position_embeddings.shape:
            # the file's grid is kept: transformers resizes it to the input's grid at run time
            reference = embeddings.position_embeddings
            embeddings.position_embeddings = nn.Parameter(
                torch.empty(position.shape, dtype=reference.dtype, device=reference.device), requires_grad=False
            )
        model.load_state_dict(dict(prepared["depth"]), strict=True)


def load_authors(segmenter: nn.Module, *paths: str | Path | None) -> AuthorsWeights:
    """Read the authors' files of one model (e.g. a training checkpoint and a backbone file) into ``segmenter``."""
    weights = read_authors(*paths)
    weights.load_into(segmenter)
    return weights


def depth_anything_config(depth: Mapping[str, Tensor], source: str) -> dict[str, Any]:
    """The transformers config of the Depth Anything V2 model whose tensors (HF names) are ``depth``, to build it
    without fetching anything. The DPT head's taps (``out_indices``) are not in the weights: they are Depth
    Anything V2's for its sizes (12 blocks: 3/6/9/12, 24: 5/12/18/24, 40: 10/20/30/40)."""
    try:
        hidden = depth[_EMB + "cls_token"].shape[-1]
        layers = 1 + max(int(m.group(1)) for k in depth if (m := re.match(r"backbone\.encoder\.layer\.(\d+)\.", k)))
        fc1 = depth["backbone.encoder.layer.0.mlp.fc1.weight"].shape[0]
        necks = [depth[f"neck.reassemble_stage.layers.{i}.projection.weight"].shape[0] for i in range(4)]
        fusion = depth["neck.fusion_stage.layers.0.projection.weight"].shape[0]
        head_hidden = depth["head.conv2.weight"].shape[0]
    except (KeyError, ValueError) as err:
        raise AuthorsCheckpointError(f"{source}: its Depth Anything weights are incomplete ({err})") from err
    taps = {12: [3, 6, 9, 12], 24: [5, 12, 18, 24], 40: [10, 20, 30, 40]}
    out_indices = taps.get(layers, [round(layers * k / 4) for k in range(1, 5)])
    return {
        "backbone_config": {
            "model_type": "dinov2",
            "hidden_size": int(hidden),
            "num_hidden_layers": int(layers),
            "num_attention_heads": max(int(hidden) // 64, 1),
            "mlp_ratio": int(fc1) // int(hidden),
            "patch_size": 14,
            "image_size": 518,
            "layerscale_value": 1.0,
            "out_indices": out_indices,
            "apply_layernorm": True,
            "reshape_hidden_states": False,
        },
        "reassemble_hidden_size": int(hidden),
        "patch_size": 14,
        "fusion_hidden_size": int(fusion),
        "head_hidden_size": int(head_hidden),
        "neck_hidden_sizes": [int(n) for n in necks],
        "depth_estimation_type": "relative",
        "max_depth": None,
    }


# --------------------------------------------------------------------------- export


def kind_of_config(model_config: Mapping[str, Any]) -> str | None:
    """:func:`kind_of` for a resolved segmenter config (what a depthforge checkpoint records)."""
    adapter = model_config.get("token_adapter") or {}
    decoder = model_config.get("refinement_decoder")
    target = str(adapter.get("_target_", ""))
    if adapter.get("zero_mlp_delta_f"):
        return None
    implemented = bool(decoder) and decoder.get("variant", "implemented") == "implemented"
    if target == "src.models.adapters.rein.ReinAdapter" and not decoder:
        return "rein"
    if target == "src.models.adapters.depthforge.DepthForgeAdapter" and implemented:
        return "depthforge"
    if not adapter and not decoder:
        return "frozen"
    return None


def export_trainable(state: Mapping[str, Tensor], kind: str | None, what: str = "this model") -> dict[str, Tensor]:
    """A trainable state (Segmenter names) in the authors' checkpoint layout: ``backbone.<method>.*`` +
    ``decode_head.*``. ``kind`` from :func:`kind_of` or :func:`kind_of_config`; None (no authors' equivalent)
    is an error naming the methods their code has."""
    if kind is None:
        raise AuthorsCheckpointError(
            f"{what} has no equivalent in the authors' code, which has REIN (ablation=rein), DepthForge "
            "(ablation=depthforge: DepthForge tokens with the implemented DRD) and the frozen VFM (ablation=frozen)"
        )
    state = {k: v for k, v in state.items() if not _derived(k)}
    adapter = {k: v for k, v in state.items() if k.startswith("token_adapter.")}
    visual = {k.removeprefix("visual_backbone.model."): v for k, v in state.items() if k.startswith("visual_backbone.")}
    rest = {k: v for k, v in state.items() if not k.startswith(("token_adapter.", "visual_backbone."))}
    out, unknown = rename_back(rest, HEAD_RULES, prefix="decode_head.")
    if adapter:
        renamed, left = rename_back(adapter, ADAPTER_RULES, prefix=ADAPTER_PREFIX.get(kind, "backbone.adapter."))
        out.update(renamed)
        unknown += left
    renamed, left = rename_back(visual, VISUAL_RULES, prefix="backbone.")
    out.update(renamed)
    unknown += [f"visual_backbone.model.{k}" for k in left]
    if unknown:
        raise AuthorsCheckpointError(
            f"{what}: {len(unknown)} tensor(s) have no name in the authors' layout: {_listing(unknown)}"
        )
    return out


def export_visual(model: nn.Module, prefix: str = "backbone.") -> dict[str, Tensor]:
    """timm's DINOv2 state in Meta's names under ``prefix``, with a zero ``mask_token`` (unused by the forward;
    the authors' model has the parameter, so their strict loading finds it)."""
    out, unknown = rename_back(model.state_dict(), VISUAL_RULES, prefix=prefix)
    if unknown:
        raise AuthorsCheckpointError(f"the visual VFM has tensors DINOv2 does not: {_listing(unknown)}")
    out[f"{prefix}mask_token"] = model.cls_token.new_zeros(1, model.cls_token.shape[-1])
    return out


def export_depth(model: nn.Module, prefix: str = "backbone.depth_anything.") -> dict[str, Tensor]:
    """transformers' Depth Anything state in the original names under ``prefix``."""
    out, unknown = rename_back(model.state_dict(), DEPTH_RULES, prefix=prefix)
    if unknown:
        raise AuthorsCheckpointError(f"the depth VFM has tensors Depth Anything V2 does not: {_listing(unknown)}")
    return out


def export_state(segmenter: nn.Module, backbones: bool = False) -> dict[str, Tensor]:
    """``segmenter``'s trainable tensors in the authors' layout (their training checkpoint); with ``backbones``,
    the frozen VFMs too (their merged full file: ``backbone.*`` DINOv2, ``backbone.depth_anything.*``)."""
    out = export_trainable(segmenter.trainable_state_dict(), kind_of(segmenter), _describe_model(segmenter))
    if backbones:
        if not segmenter.train_backbone:
            out.update(export_visual(segmenter.visual_backbone.model))
        if getattr(segmenter, "depth_backbone", None) is not None:
            out.update(export_depth(segmenter.depth_backbone.model))
    return out


def export_backbone_file(segmenter: nn.Module) -> dict[str, Tensor]:
    """The frozen VFMs as the authors' ``--backbone`` file: bare DINOv2 names (+ ``depth_anything.*`` for
    DepthForge)."""
    out = export_visual(segmenter.visual_backbone.model, prefix="")
    if getattr(segmenter, "depth_backbone", None) is not None:
        out.update(export_depth(segmenter.depth_backbone.model, prefix="depth_anything."))
    return out


def as_mmengine_checkpoint(state: Mapping[str, Tensor], meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The dict their ``tools/test.py`` loads: ``{"meta": …, "state_dict": …}``, tensors contiguous on the CPU."""
    return {
        "meta": {"exported_by": "depthforge", **dict(meta or {})},
        "state_dict": {k: v.detach().to("cpu").contiguous() for k, v in state.items()},
    }
