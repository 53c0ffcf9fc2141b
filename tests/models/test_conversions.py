"""The authors' load-time conversions and run-time position-embedding resize (docs/method.md §1.1, §1.2, D1, D2).

The references are written out here with plain torch ops, following the authors' converter scripts and DINOv2's
run-time resize step by step; the code under test lives in src/models/conversions.py and the two backbones.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.layers import resample_patch_embed
from torch import Tensor

from src.models.backbones.depth import DepthBackbone
from src.models.backbones.visual import VisualBackbone
from src.models.conversions import bicubic_patch_embed, bicubic_pos_embed, scale_factor_pos_embed
from tests.models.test_backbones import TINY, TINY_DEPTH

DINOV2 = "vit_large_patch14_dinov2"


# --- references -------------------------------------------------------------------------------------------------


def ref_kernel(weight: Tensor, kernel: int = 16) -> Tensor:
    """The converter's patch-embed step: the kernel values resized bicubically to kernel × kernel, in float32."""
    return F.interpolate(weight.float(), size=(kernel, kernel), mode="bicubic", align_corners=False)


def ref_grid(pos: Tensor, crop: tuple[int, int] = (512, 512), kernel: int = 16) -> Tensor:
    """The converter's pos-embed step: cls kept, the square token grid resized bicubically to crop // kernel."""
    cls_pos, tokens = pos[:, :1], pos[:, 1:]
    side, width = int(tokens.shape[1] ** 0.5), tokens.shape[2]
    rows, cols = crop[0] // kernel, crop[1] // kernel
    grid = tokens.reshape(-1, side, side, width).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(rows, cols), mode="bicubic", align_corners=False)
    return torch.cat([cls_pos, grid.permute(0, 2, 3, 1).reshape(-1, rows * cols, width)], dim=1)


def ref_runtime(pos: Tensor, image_hw: tuple[int, int], patch: int) -> Tensor:
    """DINOv2's forward-time resize: unchanged for a square image with the stored token count, otherwise the grid
    is scaled bicubically (no antialias) by ((g + 0.1)/√N) per side, N the stored patch positions."""
    rows, cols = image_hw[0] // patch, image_hw[1] // patch
    stored = pos.shape[1] - 1
    if rows * cols == stored and image_hw[0] == image_hw[1]:
        return pos
    root = math.sqrt(stored)
    full = pos.float()
    grid = full[:, 1:].reshape(1, int(root), int(root), -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((rows + 0.1) / root, (cols + 0.1) / root), mode="bicubic")
    assert grid.shape[-2:] == (rows, cols)
    return torch.cat([full[:, :1], grid.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)], dim=1).to(pos.dtype)


# --- the functions ----------------------------------------------------------------------------------------------


def test_functions_equal_the_references() -> None:
    torch.manual_seed(0)
    kernel, pos = torch.randn(8, 3, 14, 14), torch.randn(1, 1 + 37 * 37, 8)
    assert torch.equal(bicubic_patch_embed(kernel, 16), ref_kernel(kernel))
    assert torch.equal(bicubic_pos_embed(pos, 32), ref_grid(pos))
    assert torch.equal(bicubic_pos_embed(pos, (32, 20)), ref_grid(pos, crop=(512, 320)))
    stored = bicubic_pos_embed(pos, 32)
    for hw in [(128, 96), (512, 512), (512, 528), (96, 96), (1024, 512)]:
        assert torch.equal(
            scale_factor_pos_embed(stored, (hw[0] // 16, hw[1] // 16), image_size=hw), ref_runtime(stored, hw, 16)
        )
    assert scale_factor_pos_embed(stored, (32, 32)) is stored  # a 512² input uses the stored 32² grid as it is
    # a non-square image with a 32 × 32 grid is still resized by DINOv2 (by 32.1/32), so it is not the stored grid
    assert not torch.equal(scale_factor_pos_embed(stored, (32, 32), image_size=(512, 528)), stored)
    with pytest.raises(ValueError, match="square"):
        bicubic_pos_embed(pos[:, :-1], 32)


def test_runtime_rule_differs_from_a_resize_to_the_grid() -> None:
    """The scale factor (g + 0.1)/√N samples other positions than a resize to the target size (transformers)."""
    stored = torch.randn(1, 1 + 32 * 32, 8)
    grid = stored[:, 1:].reshape(1, 32, 32, 8).permute(0, 3, 1, 2)
    by_size = (
        F.interpolate(grid, size=(8, 6), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, 48, 8)
    )
    rule = scale_factor_pos_embed(stored, (8, 6), image_size=(128, 96))
    assert (rule[:, 1:] - by_size).abs().max() > 1e-2


# --- load-time conversion through the backbones ---------------------------------------------------------------


@pytest.fixture(scope="module")
def dinov2_patch14() -> dict[str, Tensor]:
    """A tiny DINOv2-style ViT stored as the real one is: patch 14, 518² → a 37 × 37 position grid."""
    torch.manual_seed(0)
    return timm.create_model(DINOV2, num_classes=0, img_size=518, patch_size=14, **TINY).state_dict()


def load_visual(path: Path, **kwargs) -> VisualBackbone:
    return VisualBackbone(DINOV2, checkpoint_path=str(path), img_size=512, patch_size=16, model_kwargs=TINY, **kwargs)


@pytest.mark.parametrize("layout", ["timm", "dinov2"])
def test_visual_authors_conversion_equals_the_converter(dinov2_patch14, layout: str, tmp_path: Path) -> None:
    state = dict(dinov2_patch14)
    if layout == "dinov2":  # DINOv2's own file (e.g. dinov2_vitl14_pretrain.pth): it has the mask token
        path = tmp_path / "dinov2.pth"
        torch.save(state | {"mask_token": torch.zeros(1, 64)}, path)
    else:
        path = tmp_path / "dinov2.safetensors"
        save_file(state, path)
    loaded = load_visual(path, conversion="authors").model.state_dict()
    assert torch.equal(loaded["patch_embed.proj.weight"], ref_kernel(state["patch_embed.proj.weight"]))
    assert loaded["pos_embed"].shape == (1, 1 + 32 * 32, 64)
    assert torch.equal(loaded["pos_embed"], ref_grid(state["pos_embed"]))
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state if "blocks." in k)

    timm_way = load_visual(path).model.state_dict()  # the default: timm's pseudo-inverse and antialiased grid
    assert torch.equal(
        timm_way["patch_embed.proj.weight"], resample_patch_embed(state["patch_embed.proj.weight"], [16, 16])
    )
    assert not torch.allclose(timm_way["patch_embed.proj.weight"], loaded["patch_embed.proj.weight"], atol=1e-3)
    assert not torch.allclose(timm_way["pos_embed"], loaded["pos_embed"], atol=1e-3)


def test_visual_authors_conversion_rejects_what_it_cannot_convert(dinov2_patch14, tmp_path: Path) -> None:
    path = tmp_path / "registers.pth"
    torch.save(dinov2_patch14 | {"mask_token": torch.zeros(1, 64), "register_tokens": torch.zeros(1, 4, 64)}, path)
    with pytest.raises(ValueError, match="conversion='timm'"):
        load_visual(path, conversion="authors")
    with pytest.raises(ValueError, match="conversion"):
        VisualBackbone(DINOV2, img_size=64, model_kwargs=TINY, conversion="flexivit")
    with pytest.raises(ValueError, match="pos_embed_resize"):
        VisualBackbone("eva02_large_patch14_448", img_size=64, model_kwargs=TINY, pos_embed_resize="authors")


@pytest.fixture(scope="module")
def depth_dir(tmp_path_factory) -> Path:
    """A tiny Depth Anything stored as the real one is (patch 14, 518² → 37 × 37), written by save_pretrained."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("depth")
    DepthBackbone(config=TINY_DEPTH).model.save_pretrained(folder)
    return folder


def test_depth_authors_conversion_equals_the_converter(depth_dir: Path) -> None:
    original = DepthBackbone(pretrained=str(depth_dir)).model.backbone.embeddings
    depth = DepthBackbone(pretrained=str(depth_dir), align="resample_patch", visual_patch_size=16)
    assert depth.conversion == "authors" and depth.patch_size == 16
    emb = depth.model.backbone.embeddings
    assert torch.equal(emb.patch_embeddings.projection.weight, ref_kernel(original.patch_embeddings.projection.weight))
    assert torch.equal(emb.patch_embeddings.projection.bias, original.patch_embeddings.projection.bias)
    assert emb.position_embeddings.shape == (1, 1 + 32 * 32, 32) and not emb.position_embeddings.requires_grad
    assert torch.equal(emb.position_embeddings, ref_grid(original.position_embeddings))

    timm_way = DepthBackbone(pretrained=str(depth_dir), align="resample_patch", conversion="timm").model
    kernel = timm_way.backbone.embeddings.patch_embeddings.projection.weight
    assert torch.equal(kernel, resample_patch_embed(original.patch_embeddings.projection.weight, [16, 16]))
    assert torch.equal(timm_way.backbone.embeddings.position_embeddings, original.position_embeddings)  # 37², kept
    with pytest.raises(ValueError, match="conversion"):
        DepthBackbone(pretrained=str(depth_dir), conversion="flexivit")


def test_depth_authors_conversion_at_512_uses_the_converted_grid_unchanged(depth_dir: Path) -> None:
    """At the 512 crop the authors' encoder adds its converted 32² grid as it is, whichever run-time rule."""
    images = torch.randn(1, 3, 512, 512)
    depth = DepthBackbone(pretrained=str(depth_dir), align="resample_patch", pos_embed_resize="authors")
    plain = DepthBackbone(pretrained=str(depth_dir), align="resample_patch")
    for a, b in zip(depth(images, (32, 32)), plain(images, (32, 32))):
        assert torch.equal(a, b)


# --- run-time resize inside the forward passes ----------------------------------------------------------------


def visual_embedding(bb: VisualBackbone, images: Tensor) -> Tensor:
    """The tokens entering block 0 of ``bb``'s forward (input of ``norm_pre``, an Identity for DINOv2)."""
    seen = []
    handle = bb.model.norm_pre.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    with torch.no_grad():
        bb(images)
    handle.remove()
    return seen[0]


def only_positions(model_patch_proj: torch.nn.Conv2d, cls_token: Tensor) -> None:
    """Zero the patch projection and the cls token, so the embedding step's output is the position embedding."""
    with torch.no_grad():
        model_patch_proj.weight.zero_()
        model_patch_proj.bias.zero_()
        cls_token.zero_()


@pytest.mark.parametrize("size", [(128, 96), (96, 96), (512, 512)])
def test_visual_runtime_resize_is_dinov2s(size: tuple[int, int]) -> None:
    """A model whose stored grid is 32 × 32 (512 crop at patch 16) on other inputs: DINOv2's rule vs timm's."""
    images = torch.randn(1, 3, *size)
    added = {}
    for rule in ("authors", "timm"):
        torch.manual_seed(0)
        bb = VisualBackbone(DINOV2, img_size=512, patch_size=16, model_kwargs=TINY, pos_embed_resize=rule)
        assert bb.model.pos_embed.shape == (1, 1025, 64)
        only_positions(bb.model.patch_embed.proj, bb.model.cls_token)
        added[rule] = visual_embedding(bb, images)
        stored = bb.model.pos_embed.detach()
    assert torch.equal(added["authors"], ref_runtime(stored, size, 16))
    if size == (512, 512):  # the stored grid: both rules add it unchanged
        assert torch.equal(added["timm"], added["authors"])
    else:
        assert (added["timm"] - added["authors"]).abs().max() > 1e-3


def test_visual_runtime_resize_keeps_the_block_loop_exact() -> None:
    """With DINOv2's rule the rest of the loop is unchanged: block outputs equal timm's blocks run on that embedding."""
    torch.manual_seed(0)
    bb = VisualBackbone(DINOV2, img_size=512, patch_size=16, model_kwargs=TINY, pos_embed_resize="authors")
    model, images = bb.model, torch.randn(2, 3, 128, 96)
    with torch.no_grad():
        patches = model.patch_embed(images).flatten(1, 2)
        x = torch.cat([model.cls_token.expand(2, -1, -1), patches], 1) + ref_runtime(model.pos_embed, (128, 96), 16)
        for block in model.blocks:
            x = block(x)
        last = bb(images)[3]  # default out_indices of 2 blocks: [0, 0, 0, 1], level 3 is ×½ of the last block
    expected = F.interpolate(x[:, 1:].transpose(1, 2).reshape(2, 64, 8, 6), scale_factor=0.5, mode="bilinear")
    torch.testing.assert_close(last, expected)


@pytest.mark.parametrize("align", ["resample_patch", "resize_input"])
def test_depth_runtime_resize_is_depth_anythings(depth_dir: Path, align: str) -> None:
    """The HF encoder's embedding output (hidden_states[0]) with the authors' rule equals DINOv2's resize of the
    stored grid; transformers' own resize to the grid differs."""
    images, grid = torch.randn(1, 3, 128, 96), (8, 6)
    added = {}
    for rule in ("authors", "transformers"):
        depth = DepthBackbone(pretrained=str(depth_dir), align=align, pos_embed_resize=rule)
        emb = depth.model.backbone.embeddings
        only_positions(emb.patch_embeddings.projection, emb.cls_token)
        with torch.no_grad():
            out = depth.model.backbone(depth.aligned_input(images, grid), output_hidden_states=True)
        added[rule] = out.hidden_states[0]
        stored, patch = emb.position_embeddings.detach(), depth.patch_size
    side = 32 if align == "resample_patch" else 37
    assert stored.shape[1] == 1 + side * side
    assert torch.equal(added["authors"], ref_runtime(stored, (grid[0] * patch, grid[1] * patch), patch))
    assert (added["transformers"] - added["authors"]).abs().max() > 1e-3


def test_depth_runtime_override_is_per_instance(depth_dir: Path) -> None:
    import copy

    from transformers.models.dinov2.modeling_dinov2 import Dinov2Embeddings

    depth = DepthBackbone(pretrained=str(depth_dir), align="resample_patch", pos_embed_resize="authors")
    other = DepthBackbone(pretrained=str(depth_dir), align="resample_patch")
    emb = depth.model.backbone.embeddings
    assert "interpolate_pos_encoding" in vars(emb) and "interpolate_pos_encoding" not in vars(
        other.model.backbone.embeddings
    )
    assert Dinov2Embeddings.interpolate_pos_encoding.__name__ == "interpolate_pos_encoding"  # the class is untouched
    twin = copy.deepcopy(depth)
    assert twin.model.backbone.embeddings.interpolate_pos_encoding.__self__ is twin.model.backbone.embeddings
    images = torch.randn(1, 3, 128, 96)
    for a, b in zip(depth(images, (8, 6)), twin(images, (8, 6))):
        assert torch.equal(a, b)


def test_visual_authors_conversion_of_eva(tmp_path: Path) -> None:
    """EVA02 (REIN's EVA converter does the same kernel resize): 224/14 = 16 = 256/16, so the grid is kept."""
    torch.manual_seed(0)
    name = "eva02_large_patch14_448"
    state = timm.create_model(name, num_classes=0, img_size=224, patch_size=14, **TINY).state_dict()
    save_file(state, tmp_path / "eva.safetensors")
    bb = VisualBackbone(
        name, checkpoint_path=str(tmp_path / "eva.safetensors"), img_size=256, model_kwargs=TINY, conversion="authors"
    )
    loaded = bb.model.state_dict()
    assert torch.equal(loaded["patch_embed.proj.weight"], ref_kernel(state["patch_embed.proj.weight"]))
    assert torch.equal(loaded["pos_embed"], state["pos_embed"])
