"""Mask2Former head (docs/method.md §5, D3) from transformers' Mask2Former modules, with token-derived queries.

transformers supplies the MSDeformAttn pixel decoder, the masked-attention decoder (with its mask predictor and
attention-mask thresholding), the Hungarian matcher and the point-sampled losses. This file adds what DepthForge
changes or HF keeps outside those modules: the queries (learned, or REIN/DepthForge's token-derived ones,
``replace_query_feat``, set by the segmenter from the adapter's ``provides_queries``), the class predictor,
semantic-segmentation targets, the loss weighting and method §5.4's semantic map. ``docs/head.md`` lists the remaining
differences from the mmdet head.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Mask2FormerConfig
from transformers import initialization as init
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerLoss,
    Mask2FormerMaskedAttentionDecoderOutput,
    Mask2FormerMLPPredictionHead,
    Mask2FormerPixelDecoder,
    Mask2FormerPreTrainedModel,
    Mask2FormerTransformerModule,
)

from src.data.labels import IGNORE_INDEX
from src.models.parts import ShapeSpec, norm_parameter_names


@dataclass
class HeadOutput:
    """Predictions of every decoder stage, the initial one first; the last is the final prediction.

    ``class_logits[i]``: (B, Q, K+1), the last class being "no object"; ``mask_logits[i]``: (B, Q, H/4, W/4).
    """

    class_logits: list[torch.Tensor]
    mask_logits: list[torch.Tensor]


class QueryInputTransformerModule(Mask2FormerTransformerModule):
    """HF's masked-attention transformer module, fed with queries chosen by the head.

    HF's ``forward`` reads the queries from its own ``queries_embedder``/``queries_features`` embeddings, which
    token-derived queries replace (method §5.2). Those embeddings are therefore removed (no dead parameters), and
    ``forward`` redoes only HF's memory preparation — level projection + ``level_embed`` and the sine key
    encoding per level — before calling HF's decoder unchanged.
    """

    def __init__(self, config: Mask2FormerConfig) -> None:
        super().__init__(in_features=config.feature_size, config=config)
        del self.queries_embedder, self.queries_features
        # transformers 5.17 keeps these in a plain list, which would leave a projection (feature_size != hidden_dim)
        # unregistered; a ModuleList is what later versions use.
        self.input_projections = nn.ModuleList(self.input_projections)

    def forward(
        self,
        multi_scale_features: Sequence[torch.Tensor],
        mask_features: torch.Tensor,
        query_features: torch.Tensor,
        query_position: torch.Tensor,
    ) -> Mask2FormerMaskedAttentionDecoderOutput:
        """``multi_scale_features``: the pixel decoder's 3 memories (strides 32, 16, 8); queries: (Q, B, D)."""
        memories, key_positions = [], []
        for level, feature in enumerate(multi_scale_features):
            memory = self.input_projections[level](feature) + self.level_embed.weight[level][:, None, None]
            position = self.position_embedder(feature.shape, feature.device, feature.dtype)
            memories.append(memory.flatten(2).permute(2, 0, 1))  # (HW, B, D), as HF's decoder expects
            key_positions.append(position.flatten(2).permute(2, 0, 1))
        return self.decoder(
            inputs_embeds=query_features,
            multi_stage_positional_embeddings=key_positions,
            pixel_embeddings=mask_features,
            encoder_hidden_states=memories,
            query_position_embeddings=query_position,
            feature_size_list=[feature.shape[-2:] for feature in multi_scale_features],
            return_dict=True,
        )


class DistributedMask2FormerLoss(Mask2FormerLoss):
    """HF's loss with the mask count averaged over DDP ranks through torch.distributed (method §5.3).

    HF only averages it under an `accelerate` state, which Lightning's DDP does not create.
    """

    def get_num_masks(self, class_labels: list[torch.Tensor], device: torch.device) -> torch.Tensor:
        num_masks = torch.as_tensor(float(sum(len(c) for c in class_labels)), device=device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(num_masks)
            num_masks = num_masks / torch.distributed.get_world_size()
        return num_masks.clamp(min=1)


class Mask2FormerHead(Mask2FormerPreTrainedModel):
    """Method §5 head: MSDeformAttn pixel decoder, 9-layer masked-attention decoder, 10 predictions, §5.3 losses.

    A ``Mask2FormerPreTrainedModel`` so that ``post_init()`` runs HF's weight init on every HF module (the bare
    pixel decoder leaves ``level_embed`` uninitialised memory, method L4). ``decoder_layers`` follows HF's
    convention: ``decoder_layers - 1`` decoder layers plus the prediction from the raw queries, i.e.
    ``decoder_layers`` (class, mask) predictions; the default 10 is the paper's 9 layers + 1.

    ``input_shape``: the maps it reads, one :class:`ShapeSpec` per level, finest first (the backbone's or the
    refinement decoder's ``output_shape()``), at the strides of HF's ``feature_strides`` (4/8/16/32).
    With ``replace_query_feat`` the queries come from the adapter (``forward(maps, queries)``, queries (Q, D)):
    they are the positional query and ``querys2feat(queries)`` the content query, the same for every image.
    Otherwise the head owns learned ``query_embed`` (positional) and ``query_feat`` (content) embeddings.
    The segmenter sets it from the adapter's ``provides_queries``. ``ignore_index`` is the label encoding's.
    """

    def __init__(
        self,
        input_shape: Sequence[ShapeSpec],
        num_classes: int = 19,
        num_queries: int = 100,
        hidden_dim: int = 256,
        feature_size: int = 256,
        mask_feature_size: int = 256,
        encoder_layers: int = 6,
        decoder_layers: int = 10,
        num_attention_heads: int = 8,
        dim_feedforward: int = 2048,
        encoder_feedforward_dim: int = 1024,
        train_num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        no_object_weight: float = 0.1,
        replace_query_feat: bool = False,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        config = Mask2FormerConfig(
            num_labels=num_classes,
            num_queries=num_queries,
            hidden_dim=hidden_dim,
            feature_size=feature_size,
            mask_feature_size=mask_feature_size,
            encoder_layers=encoder_layers,
            decoder_layers=decoder_layers,
            num_attention_heads=num_attention_heads,
            dim_feedforward=dim_feedforward,
            encoder_feedforward_dim=encoder_feedforward_dim,
            train_num_points=train_num_points,
            oversample_ratio=oversample_ratio,
            importance_sample_ratio=importance_sample_ratio,
            class_weight=class_weight,
            mask_weight=mask_weight,
            dice_weight=dice_weight,
            no_object_weight=no_object_weight,
            ignore_value=ignore_index,
        )
        super().__init__(config)
        # HF's pixel decoder reads maps at its config's feature_strides (4/8/16/32): the finest makes the mask
        # features, the other three are the decoder's memories
        if [spec.stride for spec in input_shape] != list(config.feature_strides):
            raise ValueError(
                f"the Mask2Former head reads maps at strides {list(config.feature_strides)}, finest first; "
                f"got {list(input_shape)}"
            )
        feature_channels = [spec.channels for spec in input_shape]
        self.replace_query_feat = replace_query_feat

        self.pixel_decoder = Mask2FormerPixelDecoder(config, feature_channels=feature_channels)
        self.transformer_module = QueryInputTransformerModule(config)
        if replace_query_feat:
            self.querys2feat = nn.Linear(hidden_dim, hidden_dim)
        else:
            self.query_embed = nn.Embedding(num_queries, hidden_dim)
            self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.class_predictor = nn.Linear(hidden_dim, num_classes + 1)
        self.criterion = DistributedMask2FormerLoss(
            config, weight_dict={"loss_cross_entropy": class_weight, "loss_mask": mask_weight, "loss_dice": dice_weight}
        )
        self.post_init()

    @classmethod
    def is_custom_code(cls) -> bool:
        """Declares that our init is HF's own, so ``post_init()`` initialises every module.

        For classes defined outside transformers, ``post_init()`` marks every module without direct parameters
        as already initialised (a guard for remote code that writes weights in place). That silently skips the
        MSDeformAttn offset grid and zero attention weights, the decoder's xavier init and the mask-MLP init,
        leaving those linears at HF's generic N(0, 0.02) (transformers 5.17 to 5.23).
        """
        return False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """HF's init, with the parts that differ between transformers versions pinned to the original's choices.

        transformers 5.17 zeroes the pixel decoder's ``level_embed`` and draws embeddings and the mask MLP from
        N(0, 0.02); 5.23 (and mmdet, method §5.2 "Init") use N(0, 1) and PyTorch's default. Our own linears (class
        predictor, ``querys2feat``) keep PyTorch's default as in mmdet. Children are initialised before their
        parent, so the mask-MLP re-init below overrides HF's generic linear init.
        """
        super()._init_weights(module)
        if isinstance(module, Mask2FormerPixelDecoder):
            init.normal_(module.level_embed, std=1.0)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, std=1.0)
        elif isinstance(module, Mask2FormerMLPPredictionHead):
            for linear in module.modules():
                if isinstance(linear, nn.Linear):
                    linear.reset_parameters()
        elif module is self.class_predictor or module is getattr(self, "querys2feat", None):
            module.reset_parameters()

    @property
    def ignore_index(self) -> int:
        """The label value that marks pixels without a class; the loss and the metrics skip them."""
        return self.config.ignore_value

    def no_weight_decay(self) -> set[str]:
        """Norms, the decoder's level embedding and, when the head learns its queries, both query embeddings.

        These are the head parameters the authors' configs exempt (method §7.1): their custom keys ``norm``,
        ``query_embed``, ``query_feat`` and ``level_embed`` (decay multiplier 0, matched as name substrings) plus
        ``norm_decay_mult=0`` for GroupNorms. With token-derived queries the head has neither query embedding, and
        ``querys2feat`` is a linear map that takes decay. The pixel decoder's ``level_embed`` (mmdet's
        ``level_encoding``, which no key matches) does take weight decay.
        """
        names = norm_parameter_names(self) | {"transformer_module.level_embed.weight"}
        return names | ({"query_embed.weight", "query_feat.weight"} if not self.replace_query_feat else set())

    def forward(self, maps: Sequence[torch.Tensor], queries: torch.Tensor | None = None) -> HeadOutput:
        """``maps``: 4 (B, C_l, ·, ·) maps at strides 4/8/16/32; ``queries``: (Q, D) with ``replace_query_feat``."""
        pixel = self.pixel_decoder(list(maps))
        content, position = self._decoder_queries(queries, batch_size=maps[0].shape[0])
        decoded = self.transformer_module(pixel.multi_scale_features, pixel.mask_features, content, position)
        class_logits = [self.class_predictor(hidden.transpose(0, 1)) for hidden in decoded.intermediate_hidden_states]
        return HeadOutput(class_logits=class_logits, mask_logits=list(decoded.masks_queries_logits))

    def _decoder_queries(self, queries: torch.Tensor | None, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(content, positional) queries, each (Q, B, D) as HF's decoder takes them (method §5.2)."""
        if self.replace_query_feat:
            expected = (self.config.num_queries, self.config.hidden_dim)
            if queries is None or tuple(queries.shape) != expected:
                shape = None if queries is None else tuple(queries.shape)
                raise ValueError(f"replace_query_feat=True needs adapter queries of shape {expected}, got {shape}")
            position, content = queries, self.querys2feat(queries)
        else:
            if queries is not None:
                raise ValueError("this head owns learned queries (replace_query_feat=False) but was given queries")
            position, content = self.query_embed.weight, self.query_feat.weight
        return content[:, None].expand(-1, batch_size, -1), position[:, None].expand(-1, batch_size, -1)

    def loss(self, output: HeadOutput, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Method §5.3: Hungarian matching and 2·CE + 5·BCE + 5·Dice on every stage, summed into ``"loss"``.

        ``labels``: (B, H, W) long, ``ignore_index`` for ignored pixels. The returned terms are already weighted:
        ``loss_cross_entropy``/``loss_mask``/``loss_dice`` for the final stage and ``…_{i}`` for stage i < last.
        Computed in fp32 with autocast off: the matcher hands its cost matrix to scipy, which cannot take bf16.
        """
        mask_labels, class_labels = self._targets(labels)
        class_logits = [logits.float() for logits in output.class_logits]
        mask_logits = [logits.float() for logits in output.mask_logits]
        auxiliary = [
            {"masks_queries_logits": masks, "class_queries_logits": classes}
            for masks, classes in zip(mask_logits[:-1], class_logits[:-1])
        ]
        with torch.autocast(labels.device.type, enabled=False):
            terms = self.criterion(mask_logits[-1], class_logits[-1], mask_labels, class_labels, auxiliary)
        weights = self.criterion.weight_dict
        weighted = {name: value * weights[re.sub(r"_\d+$", "", name)] for name, value in terms.items()}
        return {**weighted, "loss": torch.stack(list(weighted.values())).sum()}

    def _targets(self, labels: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per image, one binary mask (N_i, H, W) and class id (N_i,) per class present, in increasing class order;
        ignore belongs to none.

        The classes present and the label check come from one per-image histogram copied to the host once: the
        number of masks per image is data-dependent, so one host sync is unavoidable, but a `unique()` per image and
        a separate check would each add another."""
        ignore, num_classes = self.config.ignore_value, self.config.num_labels
        valid = (labels >= 0) & (labels < num_classes)
        # bins: the classes, then ignore (num_classes), then anything else (num_classes + 1)
        bins = torch.where(valid, labels, torch.where(labels == ignore, num_classes, num_classes + 1))
        flat = bins.flatten(1)
        counts = flat.new_zeros((len(labels), num_classes + 2)).scatter_add_(1, flat, torch.ones_like(flat))
        counts = counts.cpu()  # static shapes up to here: the one host copy
        if counts[:, -1].any():
            raise ValueError(f"labels must lie in [0, {num_classes}) or equal {ignore}")
        mask_labels, class_labels = [], []
        for label, present in zip(labels, counts[:, :num_classes] > 0):
            classes = present.nonzero()[:, 0].to(label.device)
            mask_labels.append((label == classes[:, None, None]).float())
            class_labels.append(classes)
        return mask_labels, class_labels

    @staticmethod
    def semantic_map(output: HeadOutput, size: tuple[int, int]) -> torch.Tensor:
        """Method §5.4: Σ_q softmax(cls_q)[:K] · σ(mask_q) of the final stage at ``size`` → (B, K, H, W)."""
        with torch.autocast(output.mask_logits[-1].device.type, enabled=False):
            masks = F.interpolate(output.mask_logits[-1].float(), size=size, mode="bilinear", align_corners=False)
            class_probs = output.class_logits[-1].float().softmax(-1)[..., :-1]
            return torch.einsum("bqk,bqhw->bkhw", class_probs, masks.sigmoid())
