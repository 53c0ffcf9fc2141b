"""DepthRefinementDecoder against method §4: the equations written out independently, and the parameter counts."""

import pytest
import torch
import torch.nn.functional as F

from src.models.decoders.drd import DepthRefinementDecoder
from src.models.parts import ShapeSpec

CHANNELS, REDUCTION = 32, 4
SIZES = (16, 8, 4, 2)  # strides 4/8/16/32 of a 64² crop


def levels(channels: int, n: int = 4) -> list[ShapeSpec]:
    return [ShapeSpec(channels, 4 * 2**i) for i in range(n)]


@pytest.fixture
def maps() -> list[torch.Tensor]:
    torch.manual_seed(0)
    return [torch.randn(2, CHANNELS, s, s) for s in SIZES]


def num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def upsampled(maps: list[torch.Tensor]) -> list[torch.Tensor]:
    return [F.interpolate(x, size=maps[0].shape[-2:], mode="bilinear", align_corners=False) for x in maps]


def reference_implemented(drd: DepthRefinementDecoder, maps: list[torch.Tensor]) -> torch.Tensor:
    """Method §4.1 with F.conv2d: shared gate a = σ(W₂ ReLU(W₁X)), m = σ(conv3×3(X⊙a)); X₀ + W_f [gated levels]."""
    squeeze, excite = drd.channel_attention[0], drd.channel_attention[2]
    spatial = drd.spatial_attention[0]
    gated = []
    for x in upsampled(maps):
        a = torch.sigmoid(F.conv2d(torch.relu(F.conv2d(x, squeeze.weight, squeeze.bias)), excite.weight, excite.bias))
        x = x * a
        m = torch.sigmoid(F.conv2d(x, spatial.weight, spatial.bias, padding=1))
        gated.append(x * m)
    return maps[0] + F.conv2d(torch.cat(gated, dim=1), drd.fuse.weight, drd.fuse.bias)


def reference_paper(drd: DepthRefinementDecoder, maps: list[torch.Tensor]) -> torch.Tensor:
    """docs/method.md §4.2 as documented: per level ReLU(W₂ W₁ X), concat, 1×1 fuse, added to X₀."""
    transformed = []
    for mlp, x in zip(drd.level_mlps, upsampled(maps)):
        first, second = mlp[0], mlp[1]
        transformed.append(torch.relu(F.conv2d(F.conv2d(x, first.weight, first.bias), second.weight, second.bias)))
    return maps[0] + F.conv2d(torch.cat(transformed, dim=1), drd.fuse.weight, drd.fuse.bias)


@pytest.mark.parametrize(("variant", "reference"), [("implemented", reference_implemented), ("paper", reference_paper)])
def test_matches_equations_and_only_level0_changes(variant, reference, maps):
    drd = DepthRefinementDecoder(levels(CHANNELS), reduction=REDUCTION, variant=variant)
    out = drd(maps)
    assert [o.shape for o in out] == [m.shape for m in maps]
    torch.testing.assert_close(out[0], reference(drd, maps))
    assert not torch.allclose(out[0], maps[0])
    for refined, original in zip(out[1:], maps[1:]):
        assert refined is original


@pytest.mark.parametrize("variant", ["implemented", "paper"])
def test_every_parameter_gets_gradient(variant, maps):
    drd = DepthRefinementDecoder(levels(CHANNELS), reduction=REDUCTION, variant=variant)
    drd(maps)[0].square().mean().backward()
    for name, p in drd.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_implemented_gate_is_shared_across_levels():
    drd = DepthRefinementDecoder(levels(CHANNELS), reduction=REDUCTION)
    hidden = CHANNELS // REDUCTION
    gate = (CHANNELS * hidden + hidden) + (hidden * CHANNELS + CHANNELS) + (9 * CHANNELS + 1)
    assert num_params(drd) == gate + 4 * CHANNELS * CHANNELS + CHANNELS


@pytest.mark.parametrize(("variant", "count"), [("implemented", 4_336_705), ("paper", 4_723_968)])
def test_full_size_parameter_count(variant, count):
    with torch.device("meta"):
        drd = DepthRefinementDecoder(levels(1024), variant=variant)
    assert num_params(drd) == count


def test_rejects_bad_arguments(maps):
    with pytest.raises(ValueError, match="variant"):
        DepthRefinementDecoder(levels(CHANNELS), variant="unknown")
    with pytest.raises(ValueError, match="expected 4 maps"):
        DepthRefinementDecoder(levels(CHANNELS), reduction=REDUCTION)(maps[:3])
