"""Token adapters against formulations of docs/method.md §2, §3.1, D8, D9 and §9 written independently here
(einsum over the modules' tensors), plus init constants, gradient flow and the trainable-parameter counts of paper
Tables 6–7."""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from src.models.adapters import (
    AdaptFormerAdapter,
    ConcatFusionAdapter,
    DepthAwarenessOnlyAdapter,
    DepthBiasAdapter,
    DepthForgeAdapter,
    DepthTokenAdapter,
    FADAAdapter,
    LoRAAdapter,
    ReinAdapter,
    SoftmaxAverageAdapter,
    VPTAdapter,
)
from src.models.adapters.base import Adapter
from src.models.adapters.fada import haar_dwt, haar_idwt
from src.models.backbones.visual import VisualBackbone

L, C, M, R, DQ, B, N = 3, 32, 10, 4, 16, 2, 12
#: DepthForge (Table 4 "DA+AO") and the depth-fusion ablations of Tables 4–5, by their config names
VARIANTS = {
    "da_ao": DepthForgeAdapter,
    "depth_bias": DepthBiasAdapter,
    "concat": ConcatFusionAdapter,
    "depth_token": DepthTokenAdapter,
    "config2": SoftmaxAverageAdapter,
    "da_only": DepthAwarenessOnlyAdapter,
}


def n_trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def randomise(module: nn.Module) -> nn.Module:
    """Float64 and every parameter away from its init (zeros, identities, tiny s) so that each term is exercised."""
    module.double()
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(-0.5, 0.5)
    return module


def inputs(n: int = N) -> tuple[Tensor, Tensor]:
    torch.manual_seed(2)
    return torch.randn(B, n, C, dtype=torch.float64), torch.randn(B, n, C, dtype=torch.float64)


# ---------------------------------------------------------------- the method's equations, written independently
def ref_tokens(m: ReinAdapter, i: int) -> Tensor:
    """T_i (M, C) = A_i·B_i, or the stored full-rank T_i."""
    if m.rank is None:
        return m.learnable_tokens[i]
    return torch.einsum("mr,rc->mc", m.learnable_tokens_a[i], m.learnable_tokens_b[i])


def linear(x: Tensor, layer: nn.Linear) -> Tensor:
    return torch.einsum("...c,kc->...k", x, layer.weight) + layer.bias


def attention(x: Tensor, t: Tensor) -> Tensor:
    """Λ = x·Tᵀ/√C with per-image tokens t (B, M, C)."""
    return torch.einsum("bnc,bmc->bnm", x, t) / math.sqrt(x.shape[-1])


def rein_update(m: ReinAdapter, f: Tensor, s_map: Tensor, t: Tensor) -> Tensor:
    """§2.2: f + s·(W₂(G + f) + b₂), G = S[..., 1:]·(T[1:]W₁ᵀ + b₁), t per image (B, M, C)."""
    values = linear(t[:, 1:], m.mlp_token2feat)
    g = torch.einsum("bnm,bmc->bnc", s_map[..., 1:], values)
    return f + m.scale * linear(g + f, m.mlp_delta_f)


def per_image(t: Tensor) -> Tensor:
    return t.expand(B, -1, -1)


def ref_rein(m: ReinAdapter, f: Tensor, i: int) -> Tensor:
    t = per_image(ref_tokens(m, i))
    return rein_update(m, f, attention(f, t).softmax(-1), t)


def ref_depthforge(m: DepthForgeAdapter, f: Tensor, d: Tensor, i: int) -> Tensor:
    t = per_image(ref_tokens(m, i))
    if type(m) is DepthForgeAdapter:  # Eq. 5–6: one softmax over the summed, separately scaled logits
        return rein_update(m, f, (attention(f, t) + attention(d, t)).softmax(-1), t)
    if isinstance(m, DepthBiasAdapter):
        g = f + d
        return rein_update(m, g, attention(g, t).softmax(-1), t)
    if isinstance(m, ConcatFusionAdapter):
        w = m.depth_fuse.weight
        g = torch.einsum("bnc,kc->bnk", f, w[:, :C]) + torch.einsum("bnc,kc->bnk", d, w[:, C:]) + m.depth_fuse.bias
        return rein_update(m, g, attention(g, t).softmax(-1), t)
    if isinstance(m, DepthTokenAdapter):
        t = t + linear(d.mean(1), m.depth_to_token)[:, None]
        return rein_update(m, f, attention(f, t).softmax(-1), t)
    if isinstance(m, SoftmaxAverageAdapter):
        return rein_update(m, f, (attention(f, t).softmax(-1) + attention(d, t).softmax(-1)) / 2, t)
    assert isinstance(m, DepthAwarenessOnlyAdapter)  # S·T with all M tokens as values, no MLPs
    s_map = (attention(f, t) + attention(d, t)).softmax(-1)
    return f + m.scale * torch.einsum("bnm,bmc->bnc", s_map, t)


def ref_queries(m: ReinAdapter) -> Tensor:
    """§2.4: merge input index 3·c + k, k ∈ (max, mean, last) over the layers of transform(T)."""
    u = torch.einsum("lmc,dc->lmd", torch.stack([ref_tokens(m, i) for i in range(m.num_layers)]), m.transform.weight)
    u = u + m.transform.bias
    x = torch.empty(u.shape[1], 3 * u.shape[2], dtype=u.dtype)
    x[:, 0::3], x[:, 1::3], x[:, 2::3] = u.max(0).values, u.mean(0), u[-1]
    return linear(x, m.merge)


# ---------------------------------------------------------------- REIN / DepthForge: equations
@pytest.mark.parametrize("rank", [R, None])
def test_rein_update_and_queries_match_spec(rank: int | None) -> None:
    m = randomise(ReinAdapter(L, C, num_tokens=M, rank=rank, query_dim=DQ))
    f, d = inputs()
    for i in range(L):
        torch.testing.assert_close(m(f, i), ref_rein(m, f, i))
        torch.testing.assert_close(m(f, i, d), ref_rein(m, f, i))  # REIN ignores depth
    torch.testing.assert_close(m.queries(), ref_queries(m))


def test_token_zero_is_a_sink() -> None:
    """Token 0's logit is in the softmax normaliser but token 0 is no value: G = Σ_{m≥1} e^{λ_m}V_m / Σ_m e^{λ_m}."""
    m = randomise(ReinAdapter(L, C, num_tokens=M, rank=None, query_dim=DQ))
    f, _ = inputs()
    t = m.learnable_tokens[1]
    lam = torch.einsum("bnc,mc->bnm", f, t) / math.sqrt(C)
    values = linear(t, m.mlp_token2feat)
    g = torch.einsum("bnm,mc->bnc", lam[..., 1:].exp(), values[1:]) / lam.exp().sum(-1, keepdim=True)
    torch.testing.assert_close(m(f, 1), f + m.scale * linear(g + f, m.mlp_delta_f))


@pytest.mark.parametrize("variant", VARIANTS)
def test_depthforge_and_its_ablations_match_the_equations(variant: str) -> None:
    m = randomise(VARIANTS[variant](L, C, num_tokens=M, rank=R, query_dim=DQ))
    f, d = inputs()
    for i in range(L):
        torch.testing.assert_close(m(f, i, d), ref_depthforge(m, f, d, i))
    torch.testing.assert_close(m.queries(), ref_queries(m))


def test_da_ao_is_rein_on_f_plus_d_with_a_visual_residual() -> None:
    """Method §3.1 identity: Λ = (f + d)Tᵀ/√C, while the update is added to the visual stream only."""
    m = randomise(DepthForgeAdapter(L, C, num_tokens=M, rank=R, query_dim=DQ))
    f, d = inputs()
    t = per_image(ref_tokens(m, 2))
    torch.testing.assert_close(m(f, 2, d), rein_update(m, f, attention(f + d, t).softmax(-1), t))


def test_depth_paths_start_as_rein() -> None:
    """concat ([I | 0]) and depth_token (W_d = 0) equal REIN at init whatever the depth."""
    f, d = inputs()
    for cls in (ConcatFusionAdapter, DepthTokenAdapter):
        torch.manual_seed(0)
        m = cls(L, C, num_tokens=M, rank=R, query_dim=DQ).double()
        torch.manual_seed(0)
        rein = ReinAdapter(L, C, num_tokens=M, rank=R, query_dim=DQ).double()
        torch.testing.assert_close(m(f, 1, d), rein(f, 1))


def test_depthforge_needs_depth() -> None:
    m = DepthForgeAdapter(L, C, num_tokens=M, rank=R, query_dim=DQ)
    assert m.uses_depth and not ReinAdapter.uses_depth
    with pytest.raises(ValueError, match="depth"):
        m(torch.randn(B, N, C), 0)
    with pytest.raises(ValueError, match="do not match"):
        m(torch.randn(B, N, C), 0, torch.randn(B, N + 1, C))
    with pytest.raises(ValueError, match="zero_mlp_delta_f"):
        DepthAwarenessOnlyAdapter(L, C, zero_mlp_delta_f=True)


# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize("variant", ["rein", *VARIANTS])
def test_gradients_reach_the_module_and_never_depth(variant: str) -> None:
    m = {"rein": ReinAdapter, **VARIANTS}[variant](L, C, num_tokens=M, rank=R, query_dim=DQ)
    torch.manual_seed(3)
    f = torch.randn(B, N, C, requires_grad=True)
    depth = torch.randn(B, N, C, requires_grad=True)
    depth_before = depth.detach().clone()
    out = m(f, 1, depth)
    (out.square().sum() + m.queries().square().sum()).backward()
    expected = {"learnable_tokens_a", "learnable_tokens_b", "scale", "transform.weight", "merge.weight"}
    if variant != "da_only":
        expected |= {"mlp_token2feat.weight", "mlp_token2feat.bias", "mlp_delta_f.weight", "mlp_delta_f.bias"}
    expected |= {"concat": {"depth_fuse.weight"}, "depth_token": {"depth_to_token.weight"}}.get(variant, set())
    grads = {name: p.grad for name, p in m.named_parameters()}
    for name in expected:
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    assert f.grad is not None
    assert depth.grad is None
    torch.testing.assert_close(depth.detach(), depth_before, rtol=0, atol=0)


# ---------------------------------------------------------------- init
def test_rein_init_constants() -> None:
    torch.manual_seed(0)
    m = ReinAdapter(24, 1024)
    v = math.sqrt(6 / 896)
    assert v == pytest.approx(0.08183, abs=5e-6)
    for p in (m.learnable_tokens_a, m.learnable_tokens_b):
        assert p.abs().max() <= v and p.abs().max() > 0.99 * v
    assert m.scale.item() == pytest.approx(1e-3)
    bound = 1 / 32  # kaiming-uniform(a=√5) on fan-in 1024, and the default bias
    for lin in (m.mlp_token2feat, m.mlp_delta_f):
        assert lin.weight.abs().max() <= bound and lin.weight.abs().max() > 0.99 * bound
        assert lin.bias.abs().max() <= bound
    full = ReinAdapter(24, 1024, rank=None)
    assert full.learnable_tokens.shape == (24, 100, 1024)
    v_full = math.sqrt(6 / (768 + 1024))
    assert v_full == pytest.approx(0.05786, abs=5e-6)
    assert full.learnable_tokens.abs().max() <= v_full and full.learnable_tokens.abs().max() > 0.99 * v_full
    assert m.queries().shape == (100, 256)


def test_zero_mlp_delta_f_fixes_scale_and_starts_at_identity() -> None:
    m = DepthForgeAdapter(L, C, num_tokens=M, rank=R, query_dim=DQ, zero_mlp_delta_f=True)
    assert m.scale == 1.0 and "scale" not in dict(m.named_parameters())
    assert not m.mlp_delta_f.weight.any() and not m.mlp_delta_f.bias.any()
    f, d = torch.randn(B, N, C), torch.randn(B, N, C)
    torch.testing.assert_close(m(f, 0, d), f, rtol=0, atol=0)


# ---------------------------------------------------------------- trainable-parameter counts (Tables 6–7, method §2.5)
def test_token_module_counts() -> None:
    assert n_trainable(ReinAdapter(24, 1024)) == 2_990_081
    assert n_trainable(DepthForgeAdapter(24, 1024)) == 2_990_081
    assert n_trainable(ReinAdapter(32, 1280)) == 4_510_721
    assert n_trainable(DepthForgeAdapter(32, 1280)) == 4_510_721
    assert n_trainable(ReinAdapter(24, 1024, rank=None)) == 5_016_065
    variants = {
        "da_ao": 2_990_081,
        "depth_bias": 2_990_081,
        "config2": 2_990_081,
        "concat": 2_990_081 + 2 * 1024 * 1024 + 1024,
        "depth_token": 2_990_081 + 1024 * 1024 + 1024,
        "da_only": 2_990_081 - 2 * (1024 * 1024 + 1024),
    }
    for variant, count in variants.items():
        assert n_trainable(VARIANTS[variant](24, 1024)) == count, variant
    assert n_trainable(DepthForgeAdapter(24, 1024, zero_mlp_delta_f=True)) == 2_990_080  # no_scale
    assert n_trainable(FADAAdapter(24, 1024)) == 2 * (431_616 + 2_099_200 + 1) + 459_264


@pytest.fixture(scope="module")
def vit_l_meta() -> dict[str, nn.Module]:
    """Real-size DINOv2-L and EVA02-L on the meta device: shapes only, nothing allocated."""
    with torch.device("meta"):
        return {
            name: timm.create_model(name, pretrained=False, num_classes=0, img_size=512, patch_size=16)
            for name in ("vit_large_patch14_dinov2", "eva02_large_patch14_224")
        }


def test_baseline_counts_on_vit_l(vit_l_meta: dict[str, nn.Module]) -> None:
    expected = {"vit_large_patch14_dinov2": 786_432, "eva02_large_patch14_224": 1_179_648}  # 0.79 M, 1.18 M
    for name, model in vit_l_meta.items():
        backbone = StandIn(model)
        lora = LoRAAdapter(24, 1024)
        lora.attach(backbone)
        assert n_trainable(lora) == expected[name], name
        adaptformer = AdaptFormerAdapter(24, 1024)
        adaptformer.attach(backbone)
        assert n_trainable(adaptformer) == 3_171_840
        vpt = VPTAdapter(24, 1024)
        vpt.attach(backbone)
        assert n_trainable(vpt) == 3_686_400


# ---------------------------------------------------------------- in-block baselines on tiny timm models
class StandIn(nn.Module):
    """What the adapters read of VisualBackbone: the timm model, its sizes, the token grid, and a forward that
    calls the adapter on the patch tokens after every block (ViT only)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.embed_dim, self.num_layers = model, model.embed_dim, len(model.blocks)

    def grid_size(self, h: int, w: int) -> tuple[int, int]:
        return h // 16, w // 16

    def forward(self, images: Tensor, adapter: nn.Module) -> Tensor:
        x = self.model._pos_embed(self.model.patch_embed(images))
        for i, block in enumerate(self.model.blocks):
            x = block(x)
            x = torch.cat([x[:, :1], adapter(x[:, 1:], i)], dim=1)
        return x


def tiny(name: str) -> nn.Module:
    torch.manual_seed(0)
    kwargs = dict(depth=2, embed_dim=64, num_heads=2, img_size=64, patch_size=16)
    if name == "vit_large_patch14_dinov2":
        kwargs["dynamic_img_size"] = True
    return timm.create_model(name, pretrained=False, num_classes=0, **kwargs).eval().requires_grad_(False)


TINY = ["vit_large_patch14_dinov2", "eva02_large_patch14_224"]


def images() -> Tensor:
    torch.manual_seed(4)
    return torch.randn(2, 3, 64, 64)


def perturb(adapter: nn.Module) -> None:
    torch.manual_seed(5)
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(0.1 * torch.randn_like(p))


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("method", [LoRAAdapter, AdaptFormerAdapter])
def test_zero_init_methods_leave_the_vfm_unchanged(name: str, method: type) -> None:
    model = tiny(name)
    keys, reference = list(model.state_dict()), model(images())
    adapter = method(2, 64)
    adapter.attach(StandIn(model))
    assert list(model.state_dict()) == keys  # the VFM's own tree and weights are untouched
    torch.testing.assert_close(model(images()), reference, rtol=0, atol=0)
    perturb(adapter)
    out = model(images())
    assert not torch.allclose(out, reference)
    out.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter.parameters())
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(RuntimeError, match="already attached"):
        adapter.attach(StandIn(model))


def test_attach_checks_sizes() -> None:
    with pytest.raises(ValueError, match="built for 3 blocks"):
        VPTAdapter(3, 64).attach(StandIn(tiny(TINY[0])))


@pytest.mark.parametrize("name", TINY)
def test_lora_is_w_plus_ba(name: str) -> None:
    model = tiny(name)
    adapter = LoRAAdapter(2, 64, rank=4)
    adapter.attach(StandIn(model))
    perturb(adapter)
    attn = model.blocks[1].attn
    x = torch.randn(2, 5, 64)
    for proj_name, update in adapter.lora[1].items():
        proj = getattr(attn, proj_name)
        weight = proj.weight + update.up.weight @ update.down.weight
        torch.testing.assert_close(proj(x), F.linear(x, weight, proj.bias))
    assert list(adapter.lora[1]) == (["qkv"] if name == TINY[0] else ["q_proj", "k_proj", "v_proj"])


def test_adaptformer_is_a_parallel_branch() -> None:
    """x = x' + LS₂·MLP(LN₂(x')) + 0.1·(W_up·ReLU(W_down·LN₂(x') + b_down) + b_up), x' = x + LS₁·Attn(LN₁(x))."""
    model = tiny(TINY[0])
    adapter = AdaptFormerAdapter(2, 64, bottleneck=8)
    adapter.attach(StandIn(model))
    perturb(adapter)
    block, branch = model.blocks[1], adapter.bottlenecks[1]
    x = torch.randn(2, 17, 64)
    x_attn = x + block.ls1(block.attn(block.norm1(x)))
    h = block.norm2(x_attn)
    hidden = (torch.einsum("bnc,kc->bnk", h, branch.down.weight) + branch.down.bias).relu()
    adapted = torch.einsum("bnk,ck->bnc", hidden, branch.up.weight) + branch.up.bias
    torch.testing.assert_close(block(x), block.forward(x) + 0.1 * adapted)


def test_vpt_joins_and_drops_prompts_per_block() -> None:
    model = tiny(TINY[0])
    adapter = VPTAdapter(2, 64, num_prompts=6)
    adapter.attach(StandIn(model))
    x = torch.randn(2, 17, 64)
    for i, block in enumerate(model.blocks):
        joined = torch.cat([x, adapter.prompts[i].expand(2, -1, -1)], dim=1)
        torch.testing.assert_close(block(x), block.forward(joined)[:, :17])  # .forward skips the hooks
    reference = tiny(TINY[0])(images())
    out = model(images())
    assert out.shape == reference.shape and not torch.allclose(out, reference)
    out.square().sum().backward()
    assert adapter.prompts.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="token sequence"):
        model.blocks[0](torch.randn(1, 4, 4, 64))  # a SAM-like NHWC grid


def test_vpt_prompts_carry_no_rotary_position_in_eva() -> None:
    """Hooked EVA02 blocks equal blocks that take the prompts as extra, never-rotated prefix tokens."""
    model = tiny(TINY[1])
    adapter = VPTAdapter(2, 64, num_prompts=6)
    adapter.attach(StandIn(model))
    x, rope = model._pos_embed(model.patch_embed(images()))
    hooked, prefixed = x, x
    for i, block in enumerate(model.blocks):
        hooked = block(hooked, rope=rope)
        block.attn.num_prefix_tokens = 1 + 6
        joined = torch.cat([prefixed[:, :1], adapter.prompts[i].expand(2, -1, -1), prefixed[:, 1:]], dim=1)
        out = block.forward(joined, rope=rope)
        block.attn.num_prefix_tokens = 1
        prefixed = torch.cat([out[:, :1], out[:, 7:]], dim=1)
    torch.testing.assert_close(hooked, prefixed)


# ---------------------------------------------------------------- FADA (a reconstruction, method §9)
HAAR = torch.tensor([[1, 1, 1, 1], [-1, -1, 1, 1], [-1, 1, -1, 1], [1, -1, -1, 1]], dtype=torch.float64) / 2


def ref_dwt(x: Tensor) -> Tensor:
    """(B, C, H, W) → (B, C, 4, H/2, W/2) in the order LL, LH, HL, HH; each 2×2 block [a b; c d] times HAAR."""
    blocks = F.pixel_unshuffle(x, 2).unflatten(1, (x.shape[1], 4))  # per channel: a, b, c, d
    return torch.einsum("kj,bcjhw->bckhw", HAAR, blocks)


def ref_idwt(bands: Tensor) -> Tensor:
    blocks = torch.einsum("kj,bckhw->bcjhw", HAAR, bands)  # HAAR is orthogonal: its inverse is its transpose
    return F.pixel_shuffle(blocks.flatten(1, 2), 2)


def test_haar_transform() -> None:
    torch.testing.assert_close(HAAR @ HAAR.T, torch.eye(4, dtype=torch.float64))
    x = torch.randn(2, 3, 6, 8, dtype=torch.float64)
    torch.testing.assert_close(torch.stack(haar_dwt(x), dim=2), ref_dwt(x))
    torch.testing.assert_close(haar_idwt(*haar_dwt(x)), x)


def ref_fada(m: FADAAdapter, f: Tensor, grid: tuple[int, int], i: int) -> Tensor:
    gh, gw = grid
    x = f.transpose(1, 2).unflatten(2, grid)
    x = torch.cat([x, x[..., -1:]], dim=-1) if gw % 2 else x  # replicate to an even width
    x = torch.cat([x, x[..., -1:, :]], dim=-2) if gh % 2 else x
    bands = ref_dwt(x)  # (B, C, 4, h, w)
    h, w = bands.shape[-2:]
    seq = bands.flatten(3).permute(0, 2, 3, 1)  # (B, 4, h·w, C)
    lo, hi = m.low_frequency, m.high_frequency
    delta = torch.empty_like(seq)
    delta[:, 0] = ref_rein(lo, seq[:, 0], i) - seq[:, 0]
    for k in (1, 2, 3):
        band = seq[:, k]
        normed = (band - band.mean(1, keepdim=True)) / (band.var(1, unbiased=False, keepdim=True) + 1e-5).sqrt()
        delta[:, k] = ref_rein(hi, normed, i) - normed
    out = ref_idwt(delta.permute(0, 3, 1, 2).unflatten(-1, (h, w)))[..., :gh, :gw]
    return f + out.flatten(2).transpose(1, 2)


def test_fada_matches_reconstruction() -> None:
    m = randomise(FADAAdapter(L, C, num_tokens=M, rank=R, query_dim=DQ))
    for grid in ((4, 4), (3, 5)):
        f, _ = inputs(grid[0] * grid[1])
        torch.testing.assert_close(m(f, 1, None, grid), ref_fada(m, f, grid, 1))
    torch.testing.assert_close(m.queries(), ref_queries(m.low_frequency))
    f, _ = inputs(16)
    torch.testing.assert_close(m(f, 1), ref_fada(m, f, (4, 4), 1))  # without a grid: square
    with pytest.raises(ValueError, match="cannot lay"):
        m(torch.randn(B, 12, C, dtype=torch.float64), 0)


def test_the_backbone_hands_the_adapter_its_token_grid() -> None:
    """VisualBackbone calls adapter(tokens, layer, depth, grid) with the grid of the current input."""
    backbone = VisualBackbone(
        "vit_small_patch16_224", img_size=64, patch_size=16, model_kwargs=dict(depth=2, embed_dim=64, num_heads=2)
    )
    seen = []

    class Record(Adapter):
        def forward(self, tokens, layer, depth=None, grid=None):
            seen.append((layer, grid, tokens.shape[1]))
            return tokens

    backbone(torch.randn(1, 3, 64, 48), Record())
    assert seen == [(0, (4, 3), 12), (1, (4, 3), 12)]
    fada = FADAAdapter(2, 64, num_tokens=M, rank=R, query_dim=DQ)
    maps = backbone(torch.randn(1, 3, 64, 48), fada)  # a 4×3 grid: not square, odd width
    assert [tuple(m.shape[-2:]) for m in maps] == [(16, 12), (8, 6), (4, 3), (2, 1)]
