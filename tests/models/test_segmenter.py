"""What trains, what is frozen, what the optimiser holds and what a checkpoint keeps (method §1.3, §7.1, D10)."""

from __future__ import annotations

import hydra
import pytest
import torch

from src.models.segmenter import apply_multipliers
from src.utils.instantiate import build_module
from tests.conftest import TINY, compose_config

TRAINABLE_PREFIXES = ("token_adapter.", "refinement_decoder.", "mask_head.")


def optimizer_of(module) -> torch.optim.Optimizer:
    """The optimiser as ``configure_optimizers`` builds it: the configured factory, then the groups' multipliers."""
    optimizer = module.optimizer_factory(module.segmenter.param_groups())
    apply_multipliers(optimizer)
    return optimizer


def by_name(optimizer: torch.optim.Optimizer) -> dict[str, tuple[float, float]]:
    return {n: (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for n in g["param_names"]}


@pytest.fixture(scope="module")
def module(tmp_path_factory):
    cfg = compose_config(["experiment=smoke", *TINY], tmp_path_factory.mktemp("out"))
    torch.manual_seed(0)
    return build_module(cfg)


def test_only_adapter_decoder_and_head_train(module):
    seg = module.segmenter
    names = {n for n, p in seg.named_parameters() if p.requires_grad}
    assert names and all(n.startswith(TRAINABLE_PREFIXES) for n in names)
    for prefix in TRAINABLE_PREFIXES:  # every parameter of the trainable parts trains
        assert {n for n, _ in seg.named_parameters() if n.startswith(prefix)} <= names
    assert not any(p.requires_grad for p in seg.visual_backbone.parameters())
    assert not any(p.requires_grad for p in seg.depth_backbone.parameters())


def test_gradients_reach_exactly_the_trainable_parameters(module):
    seg = module.segmenter.train()
    seg.zero_grad(set_to_none=True)
    images, labels = torch.randn(2, 3, 64, 64), torch.randint(0, 19, (2, 64, 64))
    depth = seg.depth_tokens(images)
    assert all(d.grad_fn is None and not d.requires_grad for d in depth)
    losses = seg.loss(images, labels)
    assert set(losses) >= {"loss", "loss_cross_entropy", "loss_mask", "loss_dice"}
    losses["loss"].backward()
    got = {n for n, p in seg.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    for key in ("learnable_tokens_a", "learnable_tokens_b", "mlp_token2feat", "mlp_delta_f", "transform", "merge"):
        assert any(n.startswith(f"token_adapter.{key}") for n in got), key
    assert "token_adapter.scale" in got
    assert any(n.startswith("refinement_decoder.") for n in got)
    assert any(n.startswith("mask_head.") for n in got)
    assert all(n.startswith(TRAINABLE_PREFIXES) for n in got)
    assert all(p.grad is None for p in seg.visual_backbone.parameters())
    assert all(p.grad is None for p in seg.depth_backbone.parameters())
    assert not seg.visual_backbone.model.training and not seg.depth_backbone.model.training


def test_optimiser_holds_the_trainable_parameters_in_the_spec_groups(module):
    seg = module.segmenter
    optimizer = optimizer_of(module)
    in_opt = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in seg.parameters() if p.requires_grad}
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(in_opt)  # no parameter twice
    wd = {n: g["weight_decay"] for g in optimizer.param_groups for n in g["param_names"]}
    assert all(g["lr"] == 1e-4 for g in optimizer.param_groups)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["eps"] == 1e-8
    no_decay = [n for n, v in wd.items() if v == 0.0]
    decay = [n for n, v in wd.items() if v == 0.05]
    assert set(no_decay) | set(decay) == set(wd)
    for name in ("token_adapter.learnable_tokens_a", "token_adapter.learnable_tokens_b", "token_adapter.scale"):
        assert wd[name] == 0.0
    for name in ("token_adapter.mlp_token2feat.weight", "token_adapter.mlp_delta_f.bias", "token_adapter.merge.weight"):
        assert wd[name] == 0.05
    assert all(wd[n] == 0.0 for n in wd if "norm" in n)
    assert all(wd[n] == 0.05 for n in wd if n.startswith("refinement_decoder."))
    group_norms = [
        f"mask_head.{m}.{p}"
        for m, mod in seg.mask_head.named_modules()
        if isinstance(mod, torch.nn.GroupNorm)
        for p, _ in mod.named_parameters()
    ]
    assert group_norms and all(wd[n] == 0.0 for n in group_norms)
    level = [n for n in wd if "level_embed" in n]
    assert level and all(wd[n] == (0.05 if "pixel_decoder" in n else 0.0) for n in level)


def test_lr_mult_scales_the_named_parameters_and_keeps_the_decay_groups(module):
    """mmseg custom_keys semantics: substring match, longest key first; weight decay is unchanged."""
    seg = module.segmenter
    base = by_name(optimizer_of(module))
    seg.lr_mult = {"learnable_tokens": 10.0, "learnable_tokens_b": 3.0, "token_adapter": 0.5}
    try:
        groups = optimizer_of(module).param_groups
    finally:
        seg.lr_mult = {}
    got = {n: (g["lr"], g["weight_decay"]) for g in groups for n in g["param_names"]}
    assert got.keys() == base.keys() and sum(len(g["params"]) for g in groups) == len(base)
    expected_mult = {
        "token_adapter.learnable_tokens_a": 10.0,
        "token_adapter.learnable_tokens_b": 3.0,  # the longer key wins
        "token_adapter.scale": 0.5,
        "token_adapter.mlp_delta_f.weight": 0.5,
    }
    for name, (lr, wd) in got.items():
        mult = expected_mult.get(name, 0.5 if name.startswith("token_adapter.") else 1.0)
        assert lr == pytest.approx(1e-4 * mult), name
        assert wd == base[name][1], name
    names = {g["name"] for g in groups}
    assert {"no_decay_lr_x10", "no_decay_lr_x3", "no_decay_lr_x0.5", "decay_lr_x0.5", "decay", "no_decay"} <= names
    seg.lr_mult = {"learnable_token": 2.0, "visual_backbone.model.blocks": 5.0}  # frozen: not trainable
    with pytest.raises(ValueError, match=r"\['visual_backbone.model.blocks'\] match no trainable parameter"):
        seg.param_groups()
    seg.lr_mult = {}


def test_trainable_state_dict_holds_no_vfm_tensor(module):
    seg = module.segmenter
    state = seg.trainable_state_dict()
    assert not any(k.startswith(("visual_backbone.", "depth_backbone.")) for k in state)
    trainable = {n for n, p in seg.named_parameters() if p.requires_grad}
    assert trainable <= set(state)
    seg.load_trainable_state_dict(state)
    with pytest.raises(RuntimeError, match="missing"):
        seg.load_trainable_state_dict({k: v for k, v in state.items() if "scale" not in k})
    with pytest.raises(RuntimeError, match="unexpected"):
        seg.load_trainable_state_dict({**state, "visual_backbone.model.cls_token": torch.zeros(1)})


def test_onecycle_schedule_matches_the_paper_recipe(tmp_path):
    cfg = compose_config(["experiment=gta2citys"], tmp_path)
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = hydra.utils.instantiate(cfg.model.optimizer)([{"params": [param], "lr": 1e-4}])
    scheduler = hydra.utils.instantiate(cfg.model.scheduler)(optimizer, total_steps=50000)
    expected = {0: 1.0e-5, 2500: 5.50e-5, 4999: 1.0e-4, 25000: 5.91e-5, 40000: 1.26e-5, 49999: 1.0e-6}
    lrs = {}
    for step in range(50000):
        if step in expected:
            lrs[step] = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
    for step, lr in expected.items():
        assert lrs[step] == pytest.approx(lr, rel=0.01), step
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.999)  # momentum is not cycled


def test_poly_schedule_is_mmseg_polylr():
    """lr = (lr0 - eta_min)·(1 - t/T)^0.9 + eta_min per group, the authors' REIN-style baseline schedule."""
    from src.models.schedules import poly

    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.AdamW([{"params": [params[0]], "lr": 1e-4}, {"params": [params[1]], "lr": 1e-5}])
    scheduler = poly(optimizer, total_steps=100, power=0.9, eta_min=1e-6)
    seen = []
    for _ in range(101):
        seen.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    for t in (0, 37, 99, 100):
        for lr0, lr in zip((1e-4, 1e-5), seen[t]):
            assert lr == pytest.approx((lr0 - 1e-6) * (1 - t / 100) ** 0.9 + 1e-6, rel=1e-9)


def test_a_one_step_warm_up_is_refused_with_the_fix():
    from src.models.schedules import one_cycle

    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    with pytest.raises(ValueError, match="pct_start.*trainer.max_steps"):
        one_cycle(optimizer, total_steps=10, pct_start=0.1)


def test_predict_pads_sides_that_are_not_a_multiple_of_the_patch(module):
    """A 63×40 input (patch 16) is padded with zeros to 64×48, predicted, and cropped back: the probabilities equal
    those of the explicitly padded image, cropped."""
    seg = module.segmenter.eval()
    torch.manual_seed(5)
    images = torch.randn(1, 3, 63, 40)
    probs = seg.predict(images)
    assert probs.shape == (1, seg.num_classes, 63, 40)
    padded = torch.nn.functional.pad(images, (0, 8, 0, 1))
    expected = seg.mask_head.semantic_map(seg(padded), (64, 48))[..., :63, :40]
    torch.testing.assert_close(probs, expected, rtol=0, atol=0)
