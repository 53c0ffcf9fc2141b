"""The paper's real configurations, built without weights: parameter counts (method §2.5, §4.1, §5.2) and a forward."""

from __future__ import annotations

import pytest
import torch

from src.utils.instantiate import build_module
from tests.conftest import compose_config

RANDOM_WEIGHTS = ["model.segmenter.visual_backbone.pretrained=false", "model/depth=da_v2_l_random"]


def build(tmp_path, *overrides: str, device: str = "meta"):
    cfg = compose_config(["experiment=gta2citys", *RANDOM_WEIGHTS, *overrides], tmp_path)
    with torch.device(device):
        return build_module(cfg).segmenter


def count(module) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


@pytest.mark.parametrize("backbone", ["dinov2_l", "eva02_l", "clip_l"])
def test_vit_l_depthforge_counts(backbone, tmp_path):
    seg = build(tmp_path, f"model/backbone={backbone}", "ablation=depthforge")
    assert count(seg.token_adapter) == 2_990_081
    assert count(seg.refinement_decoder) == 4_336_705
    assert count(seg.mask_head) == pytest.approx(20_579_796, rel=0.01)
    trainable = sum(p.numel() for p in seg.parameters() if p.requires_grad)
    assert trainable == count(seg.token_adapter) + count(seg.refinement_decoder) + count(seg.mask_head)
    assert seg.depth_backbone.num_layers == 24 and seg.depth_backbone.embed_dim == 1024


@pytest.mark.parametrize("ablation", ["rein", "depthforge"])
def test_sam_h_counts_match_the_paper(ablation, tmp_path):
    seg = build(tmp_path, "model/backbone=sam_h", f"ablation={ablation}")
    assert seg.visual_backbone.num_layers == 32 and seg.visual_backbone.embed_dim == 1280
    assert count(seg.token_adapter) == 4_510_721  # depth adds no parameter (method D1: zero-padded 1024 -> 1280)
    assert (seg.depth_backbone is not None) == (ablation == "depthforge")


@pytest.mark.slow
def test_real_depthforge_forward_on_cpu(tmp_path):
    """DINOv2-L + Depth Anything V2-L + DepthForge + DRD + Mask2Former, random weights, one 512x512 image."""
    torch.manual_seed(0)
    seg = build(tmp_path, "ablation=depthforge", device="cpu").eval()
    images = torch.randn(1, 3, 512, 512)
    with torch.no_grad():
        depth = seg.depth_tokens(images)
        assert len(depth) == 24 and depth[0].shape == (1, 1024, 1024)
        out = seg(images)
        probs = seg.mask_head.semantic_map(out, (512, 512))
    assert len(out.class_logits) == len(out.mask_logits) == 10
    assert out.class_logits[-1].shape == (1, 100, 20) and out.mask_logits[-1].shape == (1, 100, 128, 128)
    assert probs.shape == (1, 19, 512, 512) and torch.isfinite(probs).all()
