"""The authors' REIN/DepthForge weight files read into our models and written back (src/models/authors.py).

- the real ViT-L layouts (key names and shapes from tests/fixtures/authors_checkpoints.json) map key for key onto
  the real-size models, built on the meta device, and our export reproduces them exactly;
- tiny models with real values: export → import is exact, in one merged file or a checkpoint + backbone file;
- a file with an unknown, missing or misshaped tensor, or of another method, is refused with the keys named;
- the renaming is checked by value where torch, timm or transformers give a reference: the decoder's packed
  attention against ``nn.MultiheadAttention``, mmdet's decoder-layer order, Meta's DINOv2 layout against timm's own
  checkpoint filter, and the original Depth Anything V2 layout against transformers' own conversion rules;
- src.eval and src.predict run on the authors' files, src.eval reports per-domain mIoU.
"""

from __future__ import annotations

import importlib.util
import json
import pickle
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import timm
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from safetensors.torch import save_file
from timm.models.vision_transformer import checkpoint_filter_fn
from torch import nn
from transformers import AutoConfig, AutoModelForDepthEstimation, Mask2FormerConfig
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerAttention,
    Mask2FormerMaskedAttentionDecoderLayer,
)

from src.models import authors
from src.models.backbones.depth import DepthBackbone
from src.models.backbones.visual import VisualBackbone
from src.models.conversions import bicubic_patch_embed, bicubic_pos_embed
from src.utils.checkpoint import CheckpointError
from src.utils.instantiate import build_module
from tests.conftest import compose_config

ROOT = Path(__file__).resolve().parents[2]
LISTING = json.loads((ROOT / "tests" / "fixtures" / "authors_checkpoints.json").read_text())
REAL = ["experiment=gta2citys", "model.segmenter.visual_backbone.pretrained=false", "model/depth=da_v2_l_random"]
TINY = ["experiment=smoke"]
DOMAINS = ("snow", "night", "fog", "rain")


def build_segmenter(tmp_path: Path, overrides: list[str], seed: int = 0, device: str = "cpu") -> nn.Module:
    torch.manual_seed(seed)
    with torch.device(device):
        return build_module(compose_config(overrides, tmp_path)).segmenter.eval()


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> dict[str, nn.Module]:
    """The real-size REIN and DepthForge models (DINOv2-L, Depth Anything V2-L, full head), without storage."""
    out = tmp_path_factory.mktemp("real")
    return {m: build_segmenter(out, [*REAL, f"ablation={m}"], device="meta") for m in ("rein", "depthforge")}


def meta_state(shapes: dict[str, list[int]], keys=None) -> dict[str, torch.Tensor]:
    return {k: torch.empty(shapes[k], device="meta") for k in (keys if keys is not None else shapes)}


def shapes_of(state: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in state.items()}


# --------------------------------------------------------------------------- the real ViT-L layouts


@pytest.mark.parametrize("method", ["rein", "depthforge"])
def test_the_authors_full_model_maps_key_for_key_onto_the_real_size_model(method, real):
    """Their whole model (a merged full file: 646 / 1061 keys) fills every tensor of ours, and nothing is left."""
    seg = real[method]
    listing = LISTING[method]
    weights = authors.from_state_dict(meta_state(listing), f"{method}_full.pth")  # an unknown key would raise
    assert weights.kind == method
    prepared = authors.prepare(seg, weights)  # a missing, left-over or misshaped tensor would raise
    trainable = {k for k in seg.trainable_state_dict() if not k.startswith("mask_head.criterion.")}
    assert set(prepared["trainable"]) == trainable
    assert shapes_of(prepared["visual"]) == shapes_of(seg.visual_backbone.model.state_dict())
    if method == "depthforge":
        assert shapes_of(prepared["depth"]) == shapes_of(seg.depth_backbone.model.state_dict())
    else:
        assert "depth" not in prepared and seg.depth_backbone is None
    # every key of theirs was used: packed attentions split in 3 (9 decoder layers' self-attention, 24 depth
    # blocks' qkv, weight and bias each); only DINOv2's mask_token has no tensor in timm's model
    splits = 2 * 9 + (2 * 24 if method == "depthforge" else 0)
    used = sum(len(part) for part in prepared.values())
    assert used == len(listing) - 1 + 2 * splits
    # and our export of the real-size model is their layout, name for name and shape for shape
    assert shapes_of(authors.export_state(seg, backbones=True)) == listing


@pytest.mark.parametrize("method", ["rein", "depthforge"])
def test_the_authors_training_checkpoint_fills_the_trainable_part(method, real):
    seg = real[method]
    keys = LISTING[f"{method}_checkpoint"]
    weights = authors.from_state_dict(meta_state(LISTING[method], keys), "iter_40000.pth")
    assert not weights.visual and not weights.depth
    prepared = authors.prepare(seg, weights)
    assert set(prepared) == {"trainable"}
    assert len(prepared["trainable"]) == len(keys) + 4 * 9  # the 9 self-attention in_proj weights/biases split
    exported = authors.export_state(seg)
    assert sorted(exported) == keys
    assert all(list(v.shape) == LISTING[method][k] for k, v in exported.items())


def test_a_file_for_another_model_size_is_refused_with_the_shapes(tmp_path):
    seg = build_segmenter(tmp_path, [*TINY, "ablation=rein"])
    keys = LISTING["rein_checkpoint"]
    state = {k: torch.zeros(LISTING["rein"][k]) for k in keys}
    with pytest.raises(authors.AuthorsCheckpointError, match=r"vit_l\.pth: \d+ tensor\(s\).*do not fit") as err:
        authors.prepare(seg, authors.from_state_dict(state, "vit_l.pth"))
    assert "mask_head.class_predictor.weight: file (20, 256), model (20, 32)" in str(err.value)
    assert "model/backbone=dinov2_l" in str(err.value)


# --------------------------------------------------------------------------- tiny models, real values

TINY_CASES = {
    "rein": ["ablation=rein"],
    "depthforge": ["ablation=depthforge"],
    "depthforge_patch16": ["ablation=depthforge", "model.segmenter.depth_backbone.align=resample_patch"],
}


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sb[key], sa[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("case", list(TINY_CASES))
def test_export_then_import_round_trips_exactly(case, tmp_path):
    """Every tensor of a second model (other seed) ends up equal to the first's; the forward agrees; the export
    of the loaded model is the file again. Once as one merged file, once as checkpoint + backbone file."""
    overrides = [*TINY, *TINY_CASES[case]]
    source = build_segmenter(tmp_path, overrides, seed=0)
    merged = authors.export_state(source, backbones=True)
    assert all(k.startswith(("backbone.", "decode_head.")) for k in merged)
    torch.save(authors.as_mmengine_checkpoint(merged), tmp_path / "full.pth")
    target = build_segmenter(tmp_path, overrides, seed=1)
    weights = authors.load_authors(target, tmp_path / "full.pth")
    assert weights.kind == case.split("_")[0] and len(weights.layouts) == 1
    assert_same_state(source, target)
    images = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(target.predict(images), source.predict(images), rtol=0, atol=0)
    again = authors.export_state(target, backbones=True)
    assert again.keys() == merged.keys() and all(torch.equal(again[k], merged[k]) for k in merged)

    # the authors' evaluation layout: training checkpoint (safetensors here) + their --backbone file
    save_file(authors.export_state(source), tmp_path / "rein_head.safetensors")
    torch.save(authors.export_backbone_file(source), tmp_path / "backbone.pth")
    split = build_segmenter(tmp_path, overrides, seed=2)
    authors.load_authors(split, tmp_path / "rein_head.safetensors", tmp_path / "backbone.pth")
    assert_same_state(source, split)


def test_the_backbones_may_come_as_the_original_files(tmp_path):
    """DepthForge's training checkpoint with Meta's DINOv2 layout and the original Depth Anything V2 file (a list)."""
    overrides = [*TINY, "ablation=depthforge"]
    source = build_segmenter(tmp_path, overrides, seed=0)
    torch.save(authors.as_mmengine_checkpoint(authors.export_state(source)), tmp_path / "head.pth")
    torch.save(authors.export_visual(source.visual_backbone.model, prefix=""), tmp_path / "dinov2.pth")
    torch.save(authors.export_depth(source.depth_backbone.model, prefix=""), tmp_path / "depth_anything_v2.pth")
    assert all(k.startswith(("pretrained.", "depth_head.")) for k in torch.load(tmp_path / "depth_anything_v2.pth"))
    content, weights = authors.open_checkpoint(
        tmp_path / "head.pth", [str(tmp_path / "dinov2.pth"), str(tmp_path / "depth_anything_v2.pth")]
    )
    assert content is None and len(weights.layouts) == 3
    target = build_segmenter(tmp_path, overrides, seed=1)
    weights.load_into(target)
    assert_same_state(source, target)
    with pytest.raises(authors.AuthorsCheckpointError, match="two files hold the visual VFM"):
        authors.open_checkpoint(tmp_path / "head.pth", [str(tmp_path / "dinov2.pth")] * 2)
    with pytest.raises(authors.AuthorsCheckpointError, match="holds only backbone weights"):
        authors.open_checkpoint(tmp_path / "dinov2.pth")


def test_a_missing_or_unknown_key_is_refused_with_the_keys_and_the_file(tmp_path):
    seg = build_segmenter(tmp_path, [*TINY, "ablation=rein"])
    state = authors.export_state(seg)
    missing = dict(state)
    del missing["decode_head.cls_embed.bias"]
    with pytest.raises(authors.AuthorsCheckpointError, match="missing.*mask_head.class_predictor.bias") as err:
        authors.prepare(seg, authors.from_state_dict(missing, "head_without_bias.pth"))
    assert "head_without_bias.pth" in str(err.value)

    extra = {**state, "decode_head.conv_seg.weight": torch.zeros(19, 32, 1, 1), "backbone.reins.extra": torch.ones(1)}
    with pytest.raises(authors.AuthorsCheckpointError, match="with_extra.pth: 2 of its") as err:
        authors.from_state_dict(extra, "with_extra.pth")
    assert "decode_head.conv_seg.weight" in str(err.value) and "backbone.reins.extra" in str(err.value)

    many = {**state, **{f"blocks.{i}.unknown": torch.zeros(1) for i in range(20)}}
    with pytest.raises(authors.AuthorsCheckpointError, match=r"\(20 in all\)"):
        authors.from_state_dict(many, "many.pth")

    layers = sorted({k.split(".")[1] for k in seg.visual_backbone.model.state_dict() if k.startswith("blocks.")})
    backbone = authors.export_backbone_file(seg)
    backbone = {k: v for k, v in backbone.items() if not k.startswith(f"blocks.{layers[-1]}.")}
    with pytest.raises(authors.AuthorsCheckpointError, match=rf"missing.*blocks\.{layers[-1]}\.attn\.qkv\.bias"):
        authors.prepare(seg, authors.from_state_dict(backbone, "short.pth"))


def test_a_file_of_another_method_names_the_ablation_to_use(tmp_path):
    rein = build_segmenter(tmp_path, [*TINY, "ablation=rein"])
    depthforge = build_segmenter(tmp_path, [*TINY, "ablation=depthforge"])
    with pytest.raises(authors.AuthorsCheckpointError, match="(?s)REIN model.*DepthForgeAdapter.*ablation=rein"):
        authors.prepare(depthforge, authors.from_state_dict(authors.export_state(rein), "rein.pth"))
    with pytest.raises(authors.AuthorsCheckpointError, match="ablation=depthforge"):
        authors.prepare(rein, authors.from_state_dict(authors.export_state(depthforge), "df.pth"))
    no_drd = build_segmenter(tmp_path, [*TINY, "ablation=da_ao"])  # DepthForge tokens, no DRD: not theirs
    with pytest.raises(authors.AuthorsCheckpointError, match="no equivalent in the authors' code"):
        authors.export_state(no_drd)


def test_unsafe_files_are_refused_without_advising_unsafe_loading(tmp_path):
    path = tmp_path / "with_objects.pth"
    torch.save({"state_dict": {"decode_head.cls_embed.bias": torch.zeros(3)}, "hub": SimpleNamespace(a=1)}, path)
    with pytest.raises(CheckpointError, match="with_objects.pth") as err:
        authors.read_weight_file(path)
    assert "a pickled `types.SimpleNamespace` object" in str(err.value)
    assert "Do not load it with safe loading turned off" in str(err.value)
    assert not any(advice in str(err.value) for advice in ("weights_only", "add_safe_globals", "will likely succeed"))
    assert isinstance(err.value.__cause__, pickle.UnpicklingError)
    page = tmp_path / "iter_40000.pth"
    page.write_bytes(b"<!DOCTYPE html><html>rate limited</html>")  # a download that fetched an error page
    with pytest.raises(CheckpointError, match="iter_40000.pth .*not a PyTorch checkpoint"):
        authors.read_weight_file(page)


# --------------------------------------------------------------------------- by value: the head


def mmdet_attention(dim: int = 32, heads: int = 4) -> nn.MultiheadAttention:
    torch.manual_seed(3)
    attention = nn.MultiheadAttention(dim, heads, batch_first=True)
    with torch.no_grad():
        for p in attention.parameters():
            p.normal_(0, 0.2)
    return attention


def test_self_attention_split_from_packed_in_proj_equals_torch_multihead_attention():
    """mmdet's self-attention (``nn.MultiheadAttention``, q, k, v packed) mapped onto HF's separate q/k/v."""
    reference = mmdet_attention()
    theirs = {f"transformer_decoder.layers.0.self_attn.attn.{k}": v for k, v in reference.state_dict().items()}
    ours, unknown = authors.rename(theirs, authors.HEAD_RULES)
    assert not unknown
    prefix = "mask_head.transformer_module.decoder.layers.0.self_attn."
    hf = Mask2FormerAttention(embed_dim=32, num_heads=4)
    hf.load_state_dict({k.removeprefix(prefix): v for k, v in ours.items()}, strict=True)
    x, pos = torch.randn(2, 7, 32), torch.randn(2, 7, 32)
    expected, _ = reference(x + pos, x + pos, x)  # mmdet adds query_pos to query and key, not to the value
    got = hf(hidden_states=x.transpose(0, 1), position_embeddings=pos.transpose(0, 1))[0]  # sequence first
    torch.testing.assert_close(got.transpose(0, 1), expected, rtol=1e-5, atol=1e-6)
    # and back: the export packs q, k, v again
    back, left = authors.rename_back(ours, authors.HEAD_RULES)
    assert not left and all(torch.equal(back[k], theirs[k]) for k in theirs)


def test_a_decoder_layer_in_mmdet_order_equals_the_mapped_hf_layer():
    """mmdet's decoder layer: cross-attention → norms.0 → self-attention → norms.1 → FFN → norms.2 (post-norm),
    written out with torch modules loaded from a random mmdet-layout state; HF's layer loaded through the map."""
    dim, heads, ffn = 32, 4, 64
    torch.manual_seed(4)
    cross, self_attention = mmdet_attention(dim, heads), mmdet_attention(dim, heads)
    fc1, fc2 = nn.Linear(dim, ffn), nn.Linear(ffn, dim)
    norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))
    with torch.no_grad():
        for p in [*norms.parameters(), *fc1.parameters(), *fc2.parameters(), *self_attention.parameters()]:
            p.add_(torch.randn_like(p) * 0.3)
    layer = "transformer_decoder.layers.5."
    theirs = {
        **{f"{layer}cross_attn.attn.{k}": v for k, v in cross.state_dict().items()},
        **{f"{layer}self_attn.attn.{k}": v for k, v in self_attention.state_dict().items()},
        **{f"{layer}ffn.layers.0.0.{k}": v for k, v in fc1.state_dict().items()},
        **{f"{layer}ffn.layers.1.{k}": v for k, v in fc2.state_dict().items()},
        **{f"{layer}norms.{k}": v for k, v in norms.state_dict().items()},
    }
    ours, unknown = authors.rename(theirs, authors.HEAD_RULES)
    assert not unknown
    prefix = "mask_head.transformer_module.decoder.layers.5."
    config = Mask2FormerConfig(hidden_dim=dim, num_attention_heads=heads, dim_feedforward=ffn, dropout=0.0)
    hf = Mask2FormerMaskedAttentionDecoderLayer(config).eval()
    hf.load_state_dict({k.removeprefix(prefix): v for k, v in ours.items()}, strict=True)

    queries, query_pos = torch.randn(2, 6, dim), torch.randn(2, 6, dim)
    memory, memory_pos = torch.randn(2, 10, dim), torch.randn(2, 10, dim)
    mask = torch.rand(2 * heads, 6, 10) > 0.7
    q = norms[0](queries + cross(queries + query_pos, memory + memory_pos, memory, attn_mask=mask)[0])
    q = norms[1](q + self_attention(q + query_pos, q + query_pos, q)[0])
    expected = norms[2](q + fc2(F.relu(fc1(q))))
    got = hf(
        hidden_states=queries.transpose(0, 1),
        level_index=0,
        position_embeddings=[memory_pos.transpose(0, 1)],
        query_position_embeddings=query_pos.transpose(0, 1),
        encoder_hidden_states=[memory.transpose(0, 1)],
        encoder_attention_mask=mask,
    )[0]
    torch.testing.assert_close(got.transpose(0, 1), expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- by value: the VFMs

TINY_VIT = {"depth": 2, "embed_dim": 64, "num_heads": 2}


def meta_dinov2_state(img_size: int) -> dict[str, torch.Tensor]:
    """A DINOv2 state in Meta's layout (``dinov2_vitl14_pretrain.pth``: patch 14, a mask_token), random values."""
    torch.manual_seed(5)
    model = timm.create_model("vit_large_patch14_dinov2", img_size=img_size, num_classes=0, **TINY_VIT)
    state = {k: v + 0.1 * torch.randn_like(v) for k, v in model.state_dict().items()}
    return {**state, "mask_token": torch.randn(1, 64)}


def visual_only(backbone: VisualBackbone) -> SimpleNamespace:
    return SimpleNamespace(visual_backbone=backbone, depth_backbone=None)


def test_dinov2_from_meta_layout_equals_timm_loading_it_with_its_own_filter():
    state = meta_dinov2_state(img_size=56)
    reference = timm.create_model("vit_large_patch14_dinov2", img_size=56, num_classes=0, **TINY_VIT).eval()
    reference.load_state_dict(checkpoint_filter_fn(dict(state), reference), strict=True)
    ours = VisualBackbone("vit_large_patch14_dinov2", img_size=56, patch_size=14, model_kwargs=TINY_VIT)
    weights = authors.from_state_dict(state, "dinov2_vitl14_pretrain.pth")
    assert "Meta's original, patch 14" in weights.layouts[0]
    authors.load_prepared(visual_only(ours), authors.prepare(visual_only(ours), weights))
    images = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(ours.model.forward_features(images), reference.forward_features(images))


def test_dinov2_at_patch_14_is_converted_to_patch_16_as_the_authors_convert_it():
    state = meta_dinov2_state(img_size=70)  # a 5×5 grid at patch 14
    ours = VisualBackbone("vit_large_patch14_dinov2", img_size=64, patch_size=16, model_kwargs=TINY_VIT)
    weights = authors.from_state_dict(state, "dinov2_vitl14_pretrain.pth")
    authors.load_prepared(visual_only(ours), authors.prepare(visual_only(ours), weights))
    loaded = ours.model.state_dict()
    torch.testing.assert_close(
        loaded["patch_embed.proj.weight"], bicubic_patch_embed(state["patch_embed.proj.weight"], 16)
    )
    torch.testing.assert_close(loaded["pos_embed"], bicubic_pos_embed(state["pos_embed"], (4, 4), num_prefix=1))
    for key in ("blocks.1.attn.qkv.weight", "cls_token", "norm.bias"):
        assert torch.equal(loaded[key], state[key])
    # a file already converted for another crop size is refused with the image size to use
    converted = {**state, "patch_embed.proj.weight": bicubic_patch_embed(state["patch_embed.proj.weight"], 16)}
    with pytest.raises(authors.AuthorsCheckpointError, match="img_size=80"):
        authors.prepare(visual_only(ours), authors.from_state_dict(converted, "dinov2_converted_80.pth"))


#: a tiny Depth Anything V2 (its DINOv2 encoder, 4 blocks of width 32, and its DPT head)
DEPTH = {
    "backbone_config": {
        "model_type": "dinov2",
        "hidden_size": 32,
        "num_hidden_layers": 4,
        "num_attention_heads": 2,
        "mlp_ratio": 4,
        "patch_size": 14,
        "image_size": 518,
        "out_indices": [1, 2, 3, 4],
        "apply_layernorm": True,
        "reshape_hidden_states": False,
    },
    "reassemble_hidden_size": 32,
    "patch_size": 14,
    "neck_hidden_sizes": [8, 16, 32, 32],
    "fusion_hidden_size": 16,
    "head_hidden_size": 8,
}


def original_depth_anything_state() -> dict[str, torch.Tensor]:
    """Random weights in the original Depth Anything V2 layout (``depth_anything_v2_vitl.pth``), written from its
    architecture: the DINOv2 encoder under ``pretrained.``, the DPT head under ``depth_head.``."""
    torch.manual_seed(6)
    c, blocks, necks, f, h = 32, 4, DEPTH["neck_hidden_sizes"], 16, 8
    shapes = {
        "pretrained.cls_token": (1, 1, c),
        "pretrained.mask_token": (1, c),
        "pretrained.pos_embed": (1, 1 + 37 * 37, c),
        "pretrained.patch_embed.proj.weight": (c, 3, 14, 14),
        "pretrained.patch_embed.proj.bias": (c,),
        "pretrained.norm.weight": (c,),
        "pretrained.norm.bias": (c,),
    }
    for i in range(blocks):
        b = f"pretrained.blocks.{i}."
        shapes |= {b + "norm1.weight": (c,), b + "norm1.bias": (c,), b + "norm2.weight": (c,), b + "norm2.bias": (c,)}
        shapes |= {b + "attn.qkv.weight": (3 * c, c), b + "attn.qkv.bias": (3 * c,)}
        shapes |= {b + "attn.proj.weight": (c, c), b + "attn.proj.bias": (c,), b + "ls1.gamma": (c,)}
        shapes |= {b + "mlp.fc1.weight": (4 * c, c), b + "mlp.fc1.bias": (4 * c,), b + "ls2.gamma": (c,)}
        shapes |= {b + "mlp.fc2.weight": (c, 4 * c), b + "mlp.fc2.bias": (c,)}
    for i, n in enumerate(necks):
        shapes |= {f"depth_head.projects.{i}.weight": (n, c, 1, 1), f"depth_head.projects.{i}.bias": (n,)}
        shapes[f"depth_head.scratch.layer{i + 1}_rn.weight"] = (f, n, 3, 3)
    for i, k in ((0, 4), (1, 2), (3, 3)):  # ConvTranspose ×4, ×2, (identity), Conv stride 2
        shapes |= {f"depth_head.resize_layers.{i}.weight": (necks[i], necks[i], k, k)}
        shapes |= {f"depth_head.resize_layers.{i}.bias": (necks[i],)}
    for r in range(1, 5):
        unit = f"depth_head.scratch.refinenet{r}."
        shapes |= {unit + "out_conv.weight": (f, f, 1, 1), unit + "out_conv.bias": (f,)}
        for conv in ("resConfUnit1.conv1", "resConfUnit1.conv2", "resConfUnit2.conv1", "resConfUnit2.conv2"):
            shapes |= {f"{unit}{conv}.weight": (f, f, 3, 3), f"{unit}{conv}.bias": (f,)}
    out = "depth_head.scratch.output_conv"
    shapes |= {f"{out}1.weight": (f // 2, f, 3, 3), f"{out}1.bias": (f // 2,)}
    shapes |= {f"{out}2.0.weight": (h, f // 2, 3, 3), f"{out}2.0.bias": (h,)}
    shapes |= {f"{out}2.2.weight": (1, h, 1, 1), f"{out}2.2.bias": (1,)}
    return {k: 0.2 * torch.randn(shape) for k, shape in shapes.items()}


def transformers_conversion(state: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """The renaming of transformers' ``convert_depth_anything_to_hf.py`` (create_rename_keys, read_in_q_k_v),
    written out here as the reference (the installed wheel does not ship the script)."""
    table = [
        ("pretrained.cls_token", "backbone.embeddings.cls_token"),
        ("pretrained.mask_token", "backbone.embeddings.mask_token"),
        ("pretrained.pos_embed", "backbone.embeddings.position_embeddings"),
        ("pretrained.patch_embed.proj.weight", "backbone.embeddings.patch_embeddings.projection.weight"),
        ("pretrained.patch_embed.proj.bias", "backbone.embeddings.patch_embeddings.projection.bias"),
        ("pretrained.norm.weight", "backbone.layernorm.weight"),
        ("pretrained.norm.bias", "backbone.layernorm.bias"),
    ]
    for i in range(num_layers):
        b, e = f"pretrained.blocks.{i}.", f"backbone.encoder.layer.{i}."
        table += [(b + "ls1.gamma", e + "layer_scale1.lambda1"), (b + "ls2.gamma", e + "layer_scale2.lambda1")]
        for p in ("weight", "bias"):
            table += [(b + f"norm1.{p}", e + f"norm1.{p}"), (b + f"norm2.{p}", e + f"norm2.{p}")]
            table += [(b + f"mlp.fc1.{p}", e + f"mlp.fc1.{p}"), (b + f"mlp.fc2.{p}", e + f"mlp.fc2.{p}")]
            table += [(b + f"attn.proj.{p}", e + f"attention.output.dense.{p}")]
    for i in range(4):
        for p in ("weight", "bias"):
            table += [(f"depth_head.projects.{i}.{p}", f"neck.reassemble_stage.layers.{i}.projection.{p}")]
            if i != 2:
                table += [(f"depth_head.resize_layers.{i}.{p}", f"neck.reassemble_stage.layers.{i}.resize.{p}")]
        table += [(f"depth_head.scratch.layer{i + 1}_rn.weight", f"neck.convs.{i}.weight")]
    for i, j in {1: 3, 2: 2, 3: 1, 4: 0}.items():
        r, n = f"depth_head.scratch.refinenet{i}.", f"neck.fusion_stage.layers.{j}."
        for p in ("weight", "bias"):
            table += [(r + f"out_conv.{p}", n + f"projection.{p}")]
            for unit in (1, 2):
                for conv in (1, 2):
                    table += [
                        (r + f"resConfUnit{unit}.conv{conv}.{p}", n + f"residual_layer{unit}.convolution{conv}.{p}")
                    ]
    for p in ("weight", "bias"):
        table += [(f"depth_head.scratch.output_conv1.{p}", f"head.conv1.{p}")]
        table += [(f"depth_head.scratch.output_conv2.0.{p}", f"head.conv2.{p}")]
        table += [(f"depth_head.scratch.output_conv2.2.{p}", f"head.conv3.{p}")]
    state = dict(state)
    out = {new: state.pop(old) for old, new in table}
    for i in range(num_layers):  # read_in_q_k_v: q, k, v in that order
        for p in ("weight", "bias"):
            q, k, v = state.pop(f"pretrained.blocks.{i}.attn.qkv.{p}").chunk(3, dim=0)
            for name, value in (("query", q), ("key", k), ("value", v)):
                out[f"backbone.encoder.layer.{i}.attention.attention.{name}.{p}"] = value
    assert not state, sorted(state)
    return out


def test_depth_anything_from_the_original_layout_equals_transformers_own_conversion(tmp_path):
    """Reference: the conversion script's renaming, then transformers' own loading (which renames its Dinov2 keys
    to today's names) from a saved folder; ours: the import. Same predicted depth and encoder states."""
    state = original_depth_anything_state()
    folder = tmp_path / "converted"
    folder.mkdir()
    AutoConfig.for_model("depth_anything", **DEPTH).save_pretrained(folder)
    save_file({k: v.contiguous() for k, v in transformers_conversion(state, 4).items()}, folder / "model.safetensors")
    reference, info = AutoModelForDepthEstimation.from_pretrained(folder, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    ours = DepthBackbone(config=DEPTH, align="resize_input")
    weights = authors.from_state_dict(state, "depth_anything_v2_vitl.pth")
    assert "Depth Anything V2 (original, patch 14)" in weights.layouts[0]
    target = SimpleNamespace(depth_backbone=ours)
    authors.load_prepared(target, authors.prepare(target, weights))
    images = torch.randn(1, 3, 70, 84)
    with torch.no_grad():
        expected = reference.eval()(pixel_values=images, output_hidden_states=True)
        got = ours.model(pixel_values=images, output_hidden_states=True)
    torch.testing.assert_close(got.predicted_depth, expected.predicted_depth)
    for a, b in zip(got.hidden_states, expected.hidden_states, strict=True):
        torch.testing.assert_close(a, b)
    # the export writes the original layout back
    back = authors.export_depth(ours.model, prefix="")
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)


def test_depth_anything_at_patch_14_is_converted_for_a_patch_16_encoder():
    state = original_depth_anything_state()
    ours = DepthBackbone(config=DEPTH, align="resample_patch", visual_patch_size=16, img_size=64)
    target = SimpleNamespace(depth_backbone=ours)
    authors.load_prepared(target, authors.prepare(target, authors.from_state_dict(state, "da.pth")))
    embeddings = ours.model.backbone.embeddings
    kernel = bicubic_patch_embed(state["pretrained.patch_embed.proj.weight"], 16)
    torch.testing.assert_close(embeddings.patch_embeddings.projection.weight, kernel)
    grid = (64 // 16, 64 // 16)
    position = bicubic_pos_embed(state["pretrained.pos_embed"], grid, num_prefix=1)
    torch.testing.assert_close(embeddings.position_embeddings, position)
    with pytest.raises(authors.AuthorsCheckpointError, match="align=resample_patch"):
        converted = {**state, "pretrained.patch_embed.proj.weight": kernel}
        patch14 = DepthBackbone(config=DEPTH, align="resize_input")
        authors.prepare(SimpleNamespace(depth_backbone=patch14), authors.from_state_dict(converted, "df.pth"))


def test_the_depth_architecture_is_read_from_the_weights():
    weights = authors.from_state_dict(original_depth_anything_state(), "da.pth")
    config = authors.depth_anything_config(weights.depth, "da.pth")
    model = DepthBackbone(config=config, align="resize_input").model
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in weights.depth.items()}


# --------------------------------------------------------------------------- the entry points


def test_eval_and_predict_take_the_authors_files(tmp_path):
    """src.eval on a tiny REIN model written in the authors' layout: one merged file, or their training checkpoint
    with their backbone file, give the same per-domain mIoU; src.predict takes the same files."""
    from src.eval import evaluate
    from src.predict import predict_folder

    source = build_segmenter(tmp_path / "build", [*TINY, "ablation=rein"])
    torch.save(authors.as_mmengine_checkpoint(authors.export_state(source, backbones=True)), tmp_path / "full.pth")
    torch.save(authors.as_mmengine_checkpoint(authors.export_state(source)), tmp_path / "rein_head.pth")
    torch.save(authors.export_backbone_file(source), tmp_path / "dinov2_converted.pth")
    data = [f"paths.data_dir={tmp_path / 'data'}", "data.prepare.num_images=4", "ablation=rein"]

    merged = evaluate(compose_config([*TINY, *data, f"ckpt_path={tmp_path / 'full.pth'}"], tmp_path / "a", "eval"))
    assert [r["domain"] for r in merged[:4]] == list(DOMAINS) and merged[4]["domain"].startswith("mean(")
    assert all(0.0 <= float(r["mIoU"]) <= 100.0 for r in merged)
    assert "| snow |" in (tmp_path / "a" / "results.md").read_text()
    pair = [f"ckpt_path={tmp_path / 'rein_head.pth'}", f"backbone_ckpt={tmp_path / 'dinov2_converted.pth'}"]
    split = evaluate(compose_config([*TINY, *data, *pair], tmp_path / "b", "eval"))
    assert [r["mIoU"] for r in split] == [r["mIoU"] for r in merged]

    wrong = compose_config([*TINY, f"paths.data_dir={tmp_path / 'data'}", *pair], tmp_path / "c", "eval")
    with pytest.raises(authors.AuthorsCheckpointError, match="add ablation=rein"):
        evaluate(wrong)

    images = tmp_path / "data" / "smoke" / "acdc" / "rgb_anon" / "fog" / "val"
    cfg = compose_config(
        [*TINY, *data, *pair, f"input_dir={images}", f"output_dir={tmp_path / 'pred'}"],
        tmp_path / "d",
        config_name="predict",
    )
    written = predict_folder(cfg)
    assert len(written) == len(list(images.rglob("*.png"))) and all(p.is_file() for p in written)


def test_the_export_script_writes_a_run_checkpoint_in_the_authors_layout(tmp_path):
    """A run's checkpoint (trainable tensors + the model config it records) → their checkpoint layout, and with
    --full and --backbone-out the frozen VFMs too; importing it gives the run's model back."""
    cfg = compose_config([*TINY, "ablation=depthforge"], tmp_path)
    torch.manual_seed(0)
    module = build_module(cfg)
    ckpt = {
        "state_dict": {f"segmenter.{k}": v for k, v in module.segmenter.trainable_state_dict().items()},
        "model_config": OmegaConf.to_container(cfg.model.segmenter, resolve=True),
        "global_step": 7,
    }
    torch.save(ckpt, tmp_path / "last.ckpt")
    script = ROOT / "scripts" / "export_checkpoint.py"
    spec = importlib.util.spec_from_file_location("export_checkpoint", script)
    exporter = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(exporter)
    out, full, backbone = tmp_path / "df_head.pth", tmp_path / "df_full.pth", tmp_path / "backbone.pth"
    exporter.export(tmp_path / "last.ckpt", out)
    command = [str(tmp_path / "last.ckpt"), str(full), "--full", "--backbone-out", str(backbone)]
    proc = subprocess.run(  # the command line, as a user runs it
        [sys.executable, str(script), *command],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    head = authors.read_weight_file(out)
    assert head["meta"]["global_step"] == 7
    assert all(k.startswith(("backbone.depthforge.", "decode_head.")) for k in head["state_dict"])
    assert any(k.startswith("decode_head.DQCM.") for k in head["state_dict"])
    # the run's trainable tensors come back; the frozen VFMs are the ones the run's config builds (random in this
    # tiny config, so they are compared between the two files the script wrote from one build)
    loaded = []
    for files in ([full], [out, backbone]):
        target = build_segmenter(tmp_path, [*TINY, "ablation=depthforge"], seed=3)
        authors.load_authors(target, *files)  # every tensor of the model filled, or it raises
        trained = target.trainable_state_dict()
        for key, value in module.segmenter.trainable_state_dict().items():
            assert torch.equal(trained[key], value), key
        loaded.append(target)
    assert_same_state(*loaded)

    with pytest.raises(CheckpointError, match="not a depthforge checkpoint"):
        exporter.export(full, tmp_path / "x.pth")
