"""MiniDG's analyses: the VFM tokens they read are the segmenter's, and the token-attention diagnosis against direct
computations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from src.minidg.analysis import block_tokens, format_attention_table, token_attention
from src.minidg.dataset import test_scene as render_test_scene
from src.minidg.vfms import BlockTokens, normalize
from src.utils.instantiate import build_module
from tests.conftest import compose_config

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "minidg"


@pytest.fixture(scope="module")
def rein(tmp_path_factory):
    cfg = compose_config(["experiment=minidg", "ablation=rein"], tmp_path_factory.mktemp("out"))
    torch.manual_seed(0)
    return build_module(cfg).segmenter.eval()


@pytest.mark.skipif(not (ASSETS / "visual_vit" / "model.safetensors").is_file(), reason="VFM assets not made")
def test_analysis_tokens_are_the_segmenters(tmp_path) -> None:
    """The tokens the feature-stability analysis reads are exactly those of a MiniDG run's segmenter (DepthForge):
    its visual backbone's patch tokens after every block, and its depth tokens on the visual grid."""
    segmenter = build_module(compose_config(["experiment=minidg"], tmp_path)).segmenter.eval()
    x = normalize(np.stack([render_test_scene(0, i)[1][d] for i in range(2) for d in ("day", "night")]))
    recorder = BlockTokens()
    with torch.no_grad():
        segmenter.visual_backbone(x, recorder)
        depth = segmenter.depth_tokens(x)
        ours = {name: tokens(x) for name, tokens in block_tokens(ASSETS).items()}
    assert ours["visual"].shape == (4, 6, 8 * 16, 128)
    assert torch.equal(ours["visual"], torch.stack(recorder.tokens, 1))
    assert torch.equal(ours["depth"], torch.stack(depth, 1))


def test_flat_tokens_give_uniform_attention(rein) -> None:
    adapter = rein.token_adapter
    saved = adapter.learnable_tokens_b.detach().clone()
    with torch.no_grad():
        adapter.learnable_tokens_b.zero_()  # T = 0: every logit is 0
    try:
        stats = token_attention(rein, num_scenes=2)
    finally:
        with torch.no_grad():
            adapter.learnable_tokens_b.copy_(saved)
    layers = adapter.num_layers
    assert stats["peak"] == pytest.approx([1 / adapter.num_tokens] * layers)
    assert stats["in_use"] == [1.0] * layers  # all ties: token 0 is every patch's top token
    for domain in ("night", "fog", "snow"):
        assert stats[f"agree_{domain}"] == [1.0] * layers


def test_statistics_match_the_attention_of_the_first_block(rein) -> None:
    adapter = rein.token_adapter
    saved = adapter.learnable_tokens_b.detach().clone()
    images = {d: normalize(np.stack([render_test_scene(0, i)[1][d] for i in range(2)])) for d in ("day", "fog")}
    vit = rein.visual_backbone.model
    try:
        with torch.no_grad():
            adapter.learnable_tokens_b.mul_(300.0)  # sharpen the random-init attention
        stats = token_attention(rein, num_scenes=2)
        with torch.no_grad():
            first = {d: vit.blocks[0](vit._pos_embed(vit.patch_embed(x)))[:, 1:] for d, x in images.items()}
            s_day, s_fog = (adapter.logits(first[d], adapter.layer_tokens(0)).softmax(-1) for d in ("day", "fog"))
    finally:
        with torch.no_grad():
            adapter.learnable_tokens_b.copy_(saved)
    assert stats["peak"][0] == pytest.approx(s_day.amax(-1).mean().item(), rel=1e-5)
    assert stats["agree_fog"][0] == pytest.approx((s_day.argmax(-1) == s_fog.argmax(-1)).float().mean().item())
    counts = torch.bincount(s_day.argmax(-1).flatten(), minlength=adapter.num_tokens)
    assert stats["in_use"][0] == float((counts >= 0.01 * s_day[..., 0].numel()).sum())
    assert 1 / adapter.num_tokens < stats["peak"][0] <= 1.0
    table = format_attention_table({"rein": stats})
    assert table.count("\n") == 1 + len(stats) and "| rein | attention peak (day) |" in table
