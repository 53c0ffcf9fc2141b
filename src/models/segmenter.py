"""Segmenter: the frozen VFMs, the token adapter, the refinement decoder and the mask head, in plain PyTorch.

The parts describe themselves and the segmenter only composes them: the visual backbone states its maps
(``output_shape()``), from which the refinement decoder and the head are built; the adapter states whether it reads
depth (``uses_depth``) and provides the head's queries (``provides_queries``); every trainable part names its
parameters without weight decay (``no_weight_decay()``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from src.models.adapters.base import Adapter, IdentityAdapter
from src.models.backbones.depth import DepthBackbone, pair_depth_tokens
from src.models.backbones.visual import VisualBackbone
from src.models.heads.mask2former import HeadOutput, Mask2FormerHead

#: what ``Performance.compile`` may name: the segmenter's forward, or the blocks of the frozen VFMs
CompileTarget = Literal["segmenter", "blocks"]


@dataclass(frozen=True)
class Performance:
    """How the segmenter is run for speed and memory (docs/benchmarks.md): none of these switches changes the model,
    its checkpoints or (within float tolerance) its results, and all are off by default except ``fused_optimizer``,
    which only acts on CUDA. The run config's ``model.performance`` builds one; the module applies it.

    - ``compile``: ``"segmenter"`` compiles the segmenter's forward in place (``nn.Module.compile``; the loss, with
      its Hungarian matching, stays eager), ``"blocks"`` compiles each transformer block of the two frozen VFMs (one
      graph serves all blocks of a VFM); ``None``: eager. ``compile_backend``/``compile_mode`` go to
      ``torch.compile``.
    - ``activation_checkpointing``: each frozen visual block and the adapter step after it keep only their inputs
      and are recomputed in backward (non-reentrant checkpoints, :func:`~src.models.backbones.visual.run_block`), so
      the adapter's gradients are the same.
    - ``depth_inference_mode``: the depth VFM runs under ``torch.inference_mode`` and its tokens are copied out of it
      in the autocast dtype (bf16 under bf16 autocast, the dtype every matmul casts them to anyway; the ablations
      that add depth to the visual tokens, ``depth_bias`` and ``depth_token``, then see it rounded).
    - ``fused_optimizer``: build the optimiser with ``fused=True`` when it takes that argument and every trainable
      parameter is on CUDA (not with gradient clipping under mixed precision, which Lightning refuses).
    """

    compile: CompileTarget | None = None
    compile_backend: str = "inductor"
    compile_mode: str | None = None
    activation_checkpointing: bool = False
    depth_inference_mode: bool = False
    fused_optimizer: bool = True

    def __post_init__(self) -> None:
        if self.compile not in (None, "segmenter", "blocks"):
            raise ValueError(
                f"model.performance.compile must be null, 'segmenter' or 'blocks', got {self.compile!r}\n"
                "  fix: model.performance.compile=blocks (or =segmenter, or =null for eager)"
            )


class Segmenter(nn.Module):
    """The DepthForge-style segmenter (docs/architecture.md), usable without Lightning for inference and export.

    Parts built from the other parts are given as factories (Hydra ``_partial_: true``) and completed here:
    ``token_adapter(num_layers, embed_dim)``, ``refinement_decoder(input_shape)`` and
    ``mask_head(input_shape, replace_query_feat)``, where ``input_shape`` is the previous part's
    ``output_shape()`` and ``replace_query_feat`` the adapter's ``provides_queries``. ``depth_backbone`` is a
    factory too (``depth_backbone(visual_patch_size, img_size)``), so the depth VFM is only built when the adapter reads
    depth. ``train_backbone=True`` is the "full" fine-tuning baseline (the visual VFM trains at
    ``backbone_lr_mult``). ``lr_mult`` maps name substrings to learning-rate multipliers, as mmseg's
    ``custom_keys`` ``lr_mult`` (the longest matching key wins); the paper's configs use none. A key that matches
    no trainable parameter is an error.
    """

    def __init__(
        self,
        visual_backbone: VisualBackbone,
        mask_head: Callable[..., Mask2FormerHead],
        token_adapter: Callable[..., Adapter] | None = None,
        depth_backbone: Callable[[], DepthBackbone] | None = None,
        refinement_decoder: Callable[..., nn.Module] | None = None,
        num_classes: int = 19,
        train_backbone: bool = False,
        backbone_lr_mult: float = 0.1,
        lr_mult: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.backbone_lr_mult = backbone_lr_mult
        self.lr_mult = dict(lr_mult or {})
        self.visual_backbone = visual_backbone
        dim, layers = visual_backbone.embed_dim, visual_backbone.num_layers
        self.token_adapter = token_adapter(num_layers=layers, embed_dim=dim) if token_adapter else IdentityAdapter()
        # the VFM's own weights, told apart from adapter weights that attach() may add inside its blocks
        self._vfm_param_names = {f"visual_backbone.{n}" for n, _ in visual_backbone.named_parameters()}
        self.token_adapter.attach(visual_backbone)
        self.depth_backbone = None
        if self.token_adapter.uses_depth and depth_backbone:  # its patch/grid conversion targets the visual ones
            self.depth_backbone = depth_backbone(
                visual_patch_size=visual_backbone.patch_size, img_size=visual_backbone.img_size
            )
        if self.token_adapter.uses_depth and self.depth_backbone is None:
            raise ValueError(f"{type(self.token_adapter).__name__} reads depth tokens but no depth_backbone is set")
        shape = visual_backbone.output_shape()
        self.refinement_decoder = refinement_decoder(input_shape=shape) if refinement_decoder else None
        if self.refinement_decoder is not None:
            shape = self.refinement_decoder.output_shape()
        self.mask_head = mask_head(input_shape=shape, replace_query_feat=self.token_adapter.provides_queries)
        if self.mask_head.config.num_labels != num_classes:
            raise ValueError(
                f"the head predicts {self.mask_head.config.num_labels} classes, the segmenter {num_classes}"
            )
        self.train_backbone = train_backbone
        if train_backbone:
            for p in self.visual_backbone.model.parameters():
                p.requires_grad_(True)
        #: run the depth VFM under torch.inference_mode (set by :meth:`apply_performance`)
        self.depth_inference_mode = False

    def apply_performance(self, options: Performance) -> None:
        """Switch activation checkpointing, the depth VFM's inference mode and compilation as ``options`` say.

        Compilation is in place (``nn.Module.compile``), so parameter names and checkpoints are unchanged; it cannot
        be undone on this instance (build a new segmenter for an eager one).
        """
        self.visual_backbone.set_grad_checkpointing(options.activation_checkpointing)
        self.depth_inference_mode = options.depth_inference_mode
        if options.compile is None:
            return
        kwargs = {"backend": options.compile_backend, "mode": options.compile_mode}
        if options.compile == "segmenter":
            self.compile(**kwargs)
            return
        for block in self.frozen_blocks():
            block.compile(**kwargs)

    def frozen_blocks(self) -> list[nn.Module]:
        """The transformer blocks of the visual VFM and of the depth VFM's encoder (if built), in that order."""
        blocks = list(self.visual_backbone.model.blocks)
        if self.depth_backbone is not None:
            encoder = getattr(getattr(self.depth_backbone.model, "backbone", None), "encoder", None)
            if not isinstance(getattr(encoder, "layer", None), nn.ModuleList):
                raise ValueError(
                    f"compile='blocks' needs the depth VFM's blocks at model.backbone.encoder.layer (a DINOv2 "
                    f"encoder), which {type(self.depth_backbone.model).__name__} does not have; use compile='segmenter'"
                )
            blocks += list(encoder.layer)
        return blocks

    @property
    def ignore_index(self) -> int:
        """The label value without a class, as the head's loss reads it; the metrics use the same."""
        return self.mask_head.ignore_index

    # ------------------------------------------------------------------ forward
    def depth_tokens(self, images: torch.Tensor) -> list[torch.Tensor] | None:
        """The depth VFM's per-layer tokens paired with the visual layers (method D1), or None without depth."""
        if self.depth_backbone is None:
            return None
        grid = self.visual_backbone.grid_size(*images.shape[-2:])
        if self.depth_inference_mode:
            # dynamo cannot trace into inference mode; a compiled graph keeps no autograd state for no_grad code
            with contextlib.nullcontext() if torch.compiler.is_compiling() else torch.inference_mode():
                tokens = self.depth_backbone(images, grid)
            # inference tensors cannot be saved for backward by the trainable adapter: copy them out, in the dtype
            # autocast gives matmuls. DepthForge only multiplies them, so its results are the same; the ablations
            # that add d to f or average it (depth_bias, depth_token) see d rounded to that dtype.
            device = images.device.type
            dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else tokens[0].dtype
            tokens = [t.to(dtype=dtype, copy=True) for t in tokens]
        else:
            tokens = self.depth_backbone(images, grid)
        return pair_depth_tokens(tokens, self.visual_backbone.num_layers, self.visual_backbone.embed_dim)

    def depth_map(self, images: torch.Tensor) -> torch.Tensor | None:
        """The depth VFM's relative depth (B, H, W) of what its depth stream reads (for pictures), or None without a
        depth VFM."""
        if self.depth_backbone is None:
            return None
        return self.depth_backbone.predict_depth(images, self.visual_backbone.grid_size(*images.shape[-2:]))

    def forward(self, images: torch.Tensor) -> HeadOutput:
        maps = self.visual_backbone(images, self.token_adapter, self.depth_tokens(images))
        if self.refinement_decoder is not None:
            maps = self.refinement_decoder(maps)
        return self.mask_head(maps, self.token_adapter.queries())

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The training loss of a batch: the head's weighted terms and their sum under ``"loss"`` (method §5.3)."""
        return self.mask_head.loss(self(images), labels)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Per-class probabilities (B, K, H, W) at the input size (method §5.4).

        An input whose sides are not multiples of the visual patch size (a test image resized below the crop, say
        63 px high) is padded at the bottom and right with zeros — the mean colour after normalisation — as mmseg
        pads to a size divisor, and the prediction is cropped back.
        """
        h, w = images.shape[-2:]
        patch = self.visual_backbone.patch_size
        pad_h, pad_w = -h % patch, -w % patch
        if pad_h or pad_w:
            images = torch.nn.functional.pad(images, (0, pad_w, 0, pad_h))
        probs = self.mask_head.semantic_map(self(images), images.shape[-2:])
        return probs[..., :h, :w]

    # ------------------------------------------------------------------ trainable state
    def _frozen_prefixes(self) -> tuple[str, ...]:
        return ("depth_backbone.",) if self.train_backbone else ("depth_backbone.", "visual_backbone.")

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Trainable parameters and the buffers of trainable modules; never a tensor of a frozen VFM."""
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        params = {n for n, _ in self.named_parameters()}
        frozen = self._frozen_prefixes()
        return {
            k: v
            for k, v in self.state_dict().items()
            if k in trainable or (k not in params and not k.startswith(frozen))
        }

    def load_trainable_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load a trainable-only state dict; every trainable tensor must be present, nothing else may be."""
        expected = set(self.trainable_state_dict())
        missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
        if missing or unexpected:
            raise RuntimeError(
                "checkpoint does not match this model's trainable tensors: "
                f"missing {missing[:8]}{' …' if len(missing) > 8 else ''}, "
                f"unexpected {unexpected[:8]}{' …' if len(unexpected) > 8 else ''}"
            )
        self.load_state_dict(state_dict, strict=False)

    def no_weight_decay(self) -> set[str]:
        """Names of the trainable parameters without weight decay, as each part declares them (method §7.1)."""
        parts = {
            "visual_backbone": self.visual_backbone,
            "token_adapter": self.token_adapter,
            "refinement_decoder": self.refinement_decoder,
            "mask_head": self.mask_head,
        }
        return {
            f"{prefix}.{name}" for prefix, part in parts.items() if part is not None for name in part.no_weight_decay()
        }

    def param_groups(self) -> list[dict]:
        """Optimiser parameter groups with mmengine's multipliers ``lr_mult`` and ``decay_mult`` (method §7.1).

        The optimiser's own ``lr`` and ``weight_decay`` stay the one home of those values: the caller scales each
        group by its multipliers once the optimiser is built (:func:`apply_multipliers`). Frozen parameters are
        left out entirely; the visual VFM (``full`` baseline only) gets ``backbone_lr_mult``; a parameter whose
        name contains a key of ``lr_mult`` gets that multiplier (the longest key wins).
        """
        no_decay = self.no_weight_decay()
        keys = sorted(self.lr_mult, key=lambda k: (-len(k), k))
        groups: dict[tuple[bool, bool, float], list[tuple[str, nn.Parameter]]] = {}
        trainable = [(name, p) for name, p in self.named_parameters() if p.requires_grad]
        unmatched = [k for k in keys if not any(k in name for name, _ in trainable)]
        if unmatched:
            examples = [name for name, _ in trainable[:3]]
            raise ValueError(f"lr_mult keys {unmatched} match no trainable parameter name (e.g. {examples})")
        for name, p in trainable:
            in_backbone = name in self._vfm_param_names
            mult = next((float(self.lr_mult[k]) for k in keys if k in name), 1.0)
            if in_backbone:
                mult *= self.backbone_lr_mult
            groups.setdefault((in_backbone, name not in no_decay, mult), []).append((name, p))
        out = []
        for (in_backbone, decay, mult), named in sorted(groups.items()):
            group_name = f"{'backbone_' if in_backbone else ''}{'decay' if decay else 'no_decay'}"
            if mult != (self.backbone_lr_mult if in_backbone else 1.0):
                group_name = f"{group_name}_lr_x{mult:g}"
            out.append(
                {
                    "name": group_name,
                    "params": [p for _, p in named],
                    "param_names": [n for n, _ in named],
                    "lr_mult": mult,
                    "decay_mult": 1.0 if decay else 0.0,
                }
            )
        return out


def apply_multipliers(optimizer: torch.optim.Optimizer) -> None:
    """Scale each group's ``lr`` and ``weight_decay`` (the optimiser's defaults) by its ``lr_mult``/``decay_mult``."""
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * group.get("lr_mult", 1.0)
        group["weight_decay"] = group["weight_decay"] * group.get("decay_mult", 1.0)
