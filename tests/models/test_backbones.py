"""Visual and depth backbones on tiny random models: block-loop exactness, adapter seam, grids, pairing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from timm.layers import resample_patch_embed
from torch import Tensor, nn

from src.models.adapters.base import Adapter
from src.models.backbones.depth import DepthBackbone, pair_depth_tokens
from src.models.backbones.visual import VisualBackbone, default_out_indices
from tests.conftest import CONF_DIR

TINY = {"depth": 2, "embed_dim": 64, "num_heads": 2}
FAMILIES = {
    "dinov2": ("vit_large_patch14_dinov2", {}),
    "eva02": ("eva02_large_patch14_448", {}),
    "clip": ("vit_large_patch14_clip_224", {}),
    "sam": ("samvit_huge_patch16", {"window_size": 2, "global_attn_indexes": (1,)}),
}
#: the tiny random Depth Anything of the smoke runs, from its one home (conf/model/depth/tiny_random.yaml)
TINY_DEPTH = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / "depth" / "tiny_random.yaml").config)


def tiny_visual(family: str, depth: int = 2, **kwargs) -> VisualBackbone:
    name, extra = FAMILIES[family]
    torch.manual_seed(0)
    return VisualBackbone(name, img_size=64, model_kwargs=TINY | {"depth": depth} | extra, **kwargs)


class Recorder(Adapter):
    """Records every call and optionally shifts the tokens of one layer."""

    def __init__(self, shift_layer: int | None = None) -> None:
        super().__init__()
        self.calls: list[tuple[int, torch.Size, Tensor | None]] = []
        self.shift_layer = shift_layer

    def forward(self, tokens: Tensor, layer: int, depth: Tensor | None = None, grid: tuple | None = None) -> Tensor:
        self.calls.append((layer, tokens.shape, depth))
        return tokens + 1.0 if layer == self.shift_layer else tokens


class Scale(Adapter):
    """One learnable scalar per layer: the smallest adapter whose gradient must cross frozen blocks."""

    def __init__(self, num_layers: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(num_layers))

    def forward(self, tokens: Tensor, layer: int, depth: Tensor | None = None, grid: tuple | None = None) -> Tensor:
        return tokens * self.scale[layer]


def reference_last_block(bb: VisualBackbone, images: Tensor) -> Tensor:
    """timm's own forward_features without the final norm/neck, as a (B, C, g_h, g_w) map."""
    model = bb.model
    if hasattr(model, "neck"):
        model.neck = nn.Identity()
        return model.forward_features(images)
    model.norm = nn.Identity()
    tokens = model.forward_features(images)[:, bb.num_prefix_tokens :]
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, *bb.grid_size(*images.shape[-2:]))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("size", [(64, 64), (48, 80)])
def test_block_loop_matches_timm(family: str, size: tuple[int, int]) -> None:
    bb = tiny_visual(family, out_indices=[0, 0, 1, 1])
    images = torch.randn(2, 3, *size)
    with torch.no_grad():
        level2 = bb(images)[2]  # identity resampling of the last block
        expected = reference_last_block(bb, images)
    torch.testing.assert_close(level2, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_maps_have_spec_strides(family: str) -> None:
    bb = tiny_visual(family, depth=4)
    assert bb.out_indices == [0, 1, 2, 3]
    assert bb.embed_dim == 64 and bb.num_layers == 4 and bb.patch_size == 16
    assert bb.num_prefix_tokens == (0 if family == "sam" else 1)
    assert bb.grid_size(64, 64) == (4, 4)
    maps = bb(torch.randn(1, 3, 64, 64))
    assert [tuple(m.shape) for m in maps] == [(1, 64, 16, 16), (1, 64, 8, 8), (1, 64, 4, 4), (1, 64, 2, 2)]


@pytest.mark.parametrize("patch", [8, 16])
def test_levels_are_at_image_strides_4_8_16_32_whatever_the_patch(patch: int) -> None:
    """The pixel decoder expects strides 4/8/16/32 of the image: a patch-8 ViT (MiniDG) resamples ×2, ×1, ×½, ×¼."""
    bb = tiny_visual("dinov2", depth=4, patch_size=patch, out_indices=[3, 3, 3, 3])
    assert bb.level_scales == ((2.0, 1.0, 0.5, 0.25) if patch == 8 else (4.0, 2.0, 1.0, 0.5))
    with torch.no_grad():
        maps = bb(torch.randn(1, 3, 64, 128))
    assert [tuple(m.shape[-2:]) for m in maps] == [(16, 32), (8, 16), (4, 8), (2, 4)]
    grid = maps[1] if patch == 8 else maps[2]  # the level at the token stride is the unresampled token grid
    for level, scale in zip(maps, bb.level_scales):
        expected = grid if scale == 1 else F.interpolate(grid, scale_factor=scale, mode="bilinear")
        torch.testing.assert_close(level, expected)


def test_levels_are_bilinear_resamplings_of_the_blocks() -> None:
    bb = tiny_visual("dinov2", depth=4, out_indices=[2, 2, 2, 2])
    with torch.no_grad():
        maps = bb(torch.randn(1, 3, 64, 64))
    for level, scale in zip(maps, (4, 2, 1, 0.5)):
        expected = maps[2] if scale == 1 else F.interpolate(maps[2], scale_factor=scale, mode="bilinear")
        torch.testing.assert_close(level, expected)
    torch.testing.assert_close(maps[3], F.avg_pool2d(maps[2], 2))  # exact ½ bilinear = 2×2 mean (docs/method.md §1.1)


def test_default_out_indices_rule() -> None:
    assert default_out_indices(24) == [7, 11, 15, 23]
    assert default_out_indices(32) == [10, 15, 20, 31]
    assert default_out_indices(12) == [3, 5, 7, 11]
    assert default_out_indices(2) == [0, 0, 0, 1]
    assert default_out_indices(1) == [0, 0, 0, 0]


def test_out_indices_validated() -> None:
    with pytest.raises(ValueError, match="out_indices"):
        tiny_visual("dinov2", out_indices=[0, 1, 2])
    with pytest.raises(ValueError, match="out_indices"):
        tiny_visual("dinov2", out_indices=[0, 1, 1, 2])


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_sees_patch_tokens_and_its_depth_layer(family: str) -> None:
    bb = tiny_visual(family, depth=3)
    images = torch.randn(2, 3, 48, 80)
    depth = [torch.randn(2, 15, 7) for _ in range(bb.num_layers)]
    adapter = Recorder()
    bb(images, adapter=adapter, depth_tokens=depth)
    assert [layer for layer, _, _ in adapter.calls] == [0, 1, 2]
    assert all(shape == (2, 15, 64) for _, shape, _ in adapter.calls)
    assert all(seen is depth[layer] for layer, _, seen in adapter.calls)

    without_depth = Recorder()
    bb(images, adapter=without_depth)
    assert all(seen is None for _, _, seen in without_depth.calls)


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_edits_propagate(family: str) -> None:
    bb = tiny_visual(family, out_indices=[0, 0, 1, 1])
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        plain = bb(images)
        edited = bb(images, adapter=Recorder(shift_layer=0))
    torch.testing.assert_close(edited[0], plain[0] + 1.0)  # the edit is what block 0 emits
    assert not torch.allclose(edited[3], plain[3])  # and block 1 computes on the edited tokens


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_reaches_adapter_through_frozen_blocks(family: str) -> None:
    bb = tiny_visual(family).train()
    assert not bb.model.training and all(not p.requires_grad for p in bb.parameters())
    adapter = Scale(bb.num_layers)
    sum(m.square().sum() for m in bb(torch.randn(1, 3, 64, 64), adapter=adapter)).backward()
    assert adapter.scale.grad is not None and bool((adapter.scale.grad != 0).all())
    assert all(p.grad is None for p in bb.parameters())


def test_grad_checkpointing_gives_same_values_and_grads() -> None:
    bb = tiny_visual("eva02")
    images = torch.randn(1, 3, 64, 64)
    grads = []
    for enable in (False, True):
        bb.set_grad_checkpointing(enable)
        adapter = Scale(bb.num_layers)
        maps = bb(images, adapter=adapter)
        sum(m.sum() for m in maps).backward()
        grads.append((maps[3].detach(), adapter.scale.grad))
    torch.testing.assert_close(grads[0], grads[1])


def test_depth_tokens_count_and_grid_checked() -> None:
    bb = tiny_visual("dinov2")
    with pytest.raises(ValueError, match="one depth tensor per visual layer"):
        bb(torch.randn(1, 3, 64, 64), depth_tokens=[torch.randn(1, 16, 8)])
    with pytest.raises(ValueError, match="visual grid"):
        bb(torch.randn(1, 3, 64, 64), depth_tokens=[torch.randn(1, 9, 8)] * 2)


@pytest.mark.parametrize("family", FAMILIES)
def test_visual_vfm_declares_no_parameter_without_weight_decay(family: str) -> None:
    """``full`` baseline: the authors' ``backbone`` key outranks ``norm``, so the VFM's norms keep weight decay."""
    assert tiny_visual(family).no_weight_decay() == set()


def test_class_defaults_are_timms_and_transformers(depth_resize: DepthBackbone) -> None:
    """The paper configs opt in to the authors' conversions; the class defaults (MiniDG, smoke runs) are unchanged."""
    bb = tiny_visual("dinov2")
    assert (bb.conversion, bb.pos_embed_resize) == ("timm", "timm")
    assert (depth_resize.align, depth_resize.pos_embed_resize) == ("resize_input", "transformers")
    assert "interpolate_pos_encoding" not in vars(depth_resize.model.backbone.embeddings)


def test_unsupported_family_rejected() -> None:
    with pytest.raises(ValueError, match="VisionTransformer, Eva, VisionTransformerSAM"):
        VisualBackbone("resnet18", img_size=64)


# --- depth ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def depth_resize() -> DepthBackbone:
    torch.manual_seed(0)
    return DepthBackbone(config=TINY_DEPTH)


def hf_patch_states(depth: DepthBackbone, pixels: Tensor) -> list[Tensor]:
    out = depth.model(pixel_values=pixels, output_hidden_states=True)
    return [h[:, 1:] for h in out.hidden_states[1:]]


def test_depth_tokens_equal_hf_hidden_states(depth_resize: DepthBackbone) -> None:
    images = torch.randn(2, 3, 64, 64)
    tokens = depth_resize(images, (4, 4))
    assert depth_resize.num_layers == 4 and depth_resize.embed_dim == 32 and depth_resize.patch_size == 14
    with torch.no_grad():
        expected = hf_patch_states(depth_resize, F.interpolate(images, size=(56, 56), mode="bilinear"))
    assert len(tokens) == 4
    for got, want in zip(tokens, expected):
        assert got.shape == (2, 16, 32) and got.grad_fn is None and not got.requires_grad
        torch.testing.assert_close(got, want)


def test_depth_is_frozen_and_constant_under_autograd(depth_resize: DepthBackbone) -> None:
    depth_resize.train()
    assert not depth_resize.model.training
    assert all(not p.requires_grad for p in depth_resize.parameters())
    images = torch.randn(1, 3, 64, 64, requires_grad=True)
    assert all(t.grad_fn is None for t in depth_resize(images, (4, 4)))


@pytest.mark.parametrize("size", [(64, 64), (48, 80)])
def test_depth_grid_matches_visual_grid_resize_input(depth_resize: DepthBackbone, size: tuple[int, int]) -> None:
    visual = tiny_visual("dinov2")
    images = torch.randn(1, 3, *size)
    grid = visual.grid_size(*size)
    tokens = depth_resize(images, grid)
    assert all(t.shape == (1, grid[0] * grid[1], 32) for t in tokens)
    paired = pair_depth_tokens(tokens, visual.num_layers, visual.embed_dim)
    visual(images, adapter=Recorder(), depth_tokens=paired)  # the visual stream accepts them as they are


@pytest.mark.parametrize("conversion", ["authors", "timm"])
def test_depth_resample_patch_mode(depth_resize: DepthBackbone, tmp_path, conversion: str) -> None:
    depth_resize.model.save_pretrained(tmp_path)
    depth = DepthBackbone(pretrained=str(tmp_path), align="resample_patch", visual_patch_size=16, conversion=conversion)
    images = torch.randn(2, 3, 48, 80)
    tokens = depth(images, tiny_visual("dinov2").grid_size(48, 80))
    assert depth.patch_size == 16 and all(t.shape == (2, 15, 32) for t in tokens)

    # reference, written out by hand. authors: kernel 14→16 bicubic, pos-embed 37²→32² bicubic at load;
    # timm: kernel by timm's pseudo-inverse, pos-embed kept at 37². Then transformers resizes to the grid (bicubic).
    emb = depth_resize.model.backbone.embeddings
    weight, pos = emb.patch_embeddings.projection.weight, emb.position_embeddings[:, 1:]
    pos = pos.reshape(1, 37, 37, 32).permute(0, 3, 1, 2)
    if conversion == "authors":
        kernel = F.interpolate(weight, size=(16, 16), mode="bicubic", align_corners=False)
        pos = F.interpolate(pos, size=(32, 32), mode="bicubic", align_corners=False)
    else:
        kernel = resample_patch_embed(weight, [16, 16])
    patches = F.conv2d(images, kernel, emb.patch_embeddings.projection.bias, stride=16).flatten(2).transpose(1, 2)
    pos = F.interpolate(pos, size=(3, 5), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
    x = torch.cat([emb.cls_token.expand(2, -1, -1), patches], 1) + torch.cat([emb.position_embeddings[:, :1], pos], 1)
    with torch.no_grad():
        for layer, got in zip(depth_resize.model.backbone.encoder.layer, tokens):
            x = layer(x)
            torch.testing.assert_close(got, x[:, 1:], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="visual grid"):
        depth(images, (4, 4))
    assert depth.predict_depth(images).shape == (2, 48, 80)


def test_predict_depth_shape(depth_resize: DepthBackbone) -> None:
    depth = depth_resize.predict_depth(torch.randn(2, 3, 48, 80))
    assert depth.shape == (2, 48, 80) and depth.grad_fn is None


def test_predict_depth_on_the_visual_grid_reads_what_the_depth_stream_reads(depth_resize: DepthBackbone) -> None:
    """With the visual grid, the depth map is the DPT output on the resized input the encoder gets in the segmenter
    (align: resize_input), resized back: here 48×80 -> 3×5 tokens at patch 14 = 42×70 -> 48×80."""
    images = torch.randn(2, 3, 48, 80)
    with torch.no_grad():
        resized = F.interpolate(images, size=(42, 70), mode="bilinear", align_corners=False)
        reference = depth_resize.model(pixel_values=resized).predicted_depth
    reference = F.interpolate(reference[:, None], size=(48, 80), mode="bilinear", align_corners=False)[:, 0]
    got = depth_resize.predict_depth(images, (3, 5))
    torch.testing.assert_close(got, reference)
    assert not torch.allclose(got, depth_resize.predict_depth(images))  # the bare image gives another map


def test_prompt_depth_anything_from_config() -> None:
    depth = DepthBackbone(config=TINY_DEPTH, model_type="prompt_depth_anything")
    assert type(depth.model).__name__ == "PromptDepthAnythingForDepthEstimation"
    assert len(depth(torch.randn(1, 3, 64, 64), (4, 4))) == 4


def test_depth_arguments_validated() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        DepthBackbone()
    with pytest.raises(ValueError, match="align"):
        DepthBackbone(config=TINY_DEPTH, align="nearest")


# --- pairing ----------------------------------------------------------------------------------------------------


def test_pairing_identity_when_depths_match() -> None:
    tokens = [torch.randn(1, 4, 8) for _ in range(24)]
    paired = pair_depth_tokens(tokens, 24, 8)
    assert all(p is t for p, t in zip(paired, tokens))


def test_pairing_sam_h_like() -> None:
    tokens = [torch.full((1, 4, 1024), float(j)) for j in range(24)]
    paired = pair_depth_tokens(tokens, 32, 1280)
    expected = [round(i * 23 / 31) for i in range(32)]  # no exact halves occur for 23/31
    assert [int(p[0, 0, 0]) for p in paired] == expected
    assert expected[0] == 0 and expected[-1] == 23 and expected[16] == 12
    assert all(p.shape == (1, 4, 1280) for p in paired)
    assert all(bool((p[..., 1024:] == 0).all()) for p in paired)
    torch.testing.assert_close(paired[31][..., :1024], tokens[23])


def test_pairing_truncates_and_handles_single_layer() -> None:
    tokens = [torch.randn(1, 4, 16) for _ in range(4)]
    paired = pair_depth_tokens(tokens, 1, 8)
    assert len(paired) == 1
    torch.testing.assert_close(paired[0], tokens[3][..., :8])
    halves = (0, 1, 1, 2, 2, 3, 3)  # 7 → 4 layers reads round_half_up(i/2): 0.5→1, 1.5→2, 2.5→3
    assert [p.data_ptr() for p in pair_depth_tokens(tokens, 7, 16)] == [tokens[j].data_ptr() for j in halves]


# --- real size --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_size_dinov2_l_and_da_v2_l_shapes() -> None:
    visual = VisualBackbone("vit_large_patch14_dinov2")
    assert (visual.embed_dim, visual.num_layers, visual.out_indices) == (1024, 24, [7, 11, 15, 23])
    depth = DepthBackbone(
        config={
            "backbone_config": {
                "hidden_size": 1024,
                "num_hidden_layers": 24,
                "num_attention_heads": 16,
                "patch_size": 14,
                "image_size": 518,
                "mlp_ratio": 4,
                "out_indices": [5, 12, 18, 24],
                "apply_layernorm": True,
                "reshape_hidden_states": False,
            },
            "reassemble_hidden_size": 1024,
            "patch_size": 14,
            "fusion_hidden_size": 256,
            "neck_hidden_sizes": [256, 512, 1024, 1024],
            "depth_estimation_type": "relative",
            "max_depth": None,
        }
    )
    images = torch.randn(1, 3, 512, 512)
    with torch.no_grad():
        tokens = depth(images, visual.grid_size(512, 512))
        assert len(tokens) == 24 and all(t.shape == (1, 1024, 1024) for t in tokens)
        maps = visual(images, adapter=Recorder(), depth_tokens=pair_depth_tokens(tokens, 24, 1024))
    assert [tuple(m.shape) for m in maps] == [
        (1, 1024, 128, 128),
        (1, 1024, 64, 64),
        (1, 1024, 32, 32),
        (1, 1024, 16, 16),
    ]
