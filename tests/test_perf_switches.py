"""The speed and memory switches (``model.performance``, ``matmul_precision``) change how the segmenter runs, never
what it computes: outputs and every trainable gradient stay equal, frozen parameters get none, and each switch
reaches the built module from the command line (docs/benchmarks.md)."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from src.models.segmenter import Performance, Segmenter
from src.train import apply_matmul_precision
from src.utils.instantiate import ConfigTypeError, build_module, build_trainer
from tests.conftest import TINY, compose_config


def load_benchmark():
    """scripts/benchmark.py as a module (registered, so that its dataclasses resolve their own module)."""
    name = "depthforge_scripts_benchmark"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).resolve().parents[1] / "scripts/benchmark.py"
        )
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


benchmark = load_benchmark()

#: the marks of a test that needs a CUDA device (``pytest -m gpu``, scripts/gpu_check.sh)
gpu = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (select with -m gpu)"),
]


def on_gpu(test):
    for mark in reversed(gpu):
        test = mark(test)
    return test


def build(tmp_path: Path, *overrides: str, ablation: str = "depthforge"):
    """The tiny smoke module of ``ablation`` with ``overrides``, seeded so that two builds have the same weights."""
    cfg = compose_config(["experiment=smoke", f"ablation={ablation}", *TINY, *overrides], tmp_path)
    torch.manual_seed(0)
    return build_module(cfg)


def batch(device: str = "cpu", size: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(size, 3, 64, 64, generator=gen)
    labels = torch.randint(0, 19, (size, 64, 64), generator=gen)
    return images.to(device), labels.to(device)


def step(seg: Segmenter, images: torch.Tensor, labels: torch.Tensor, autocast: bool = False) -> dict:
    """Forward, loss and backward with the loss's point sampling seeded; the outputs, loss and gradients."""
    seg.train().zero_grad(set_to_none=True)
    context = torch.autocast(images.device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with context:
        output = seg(images)
        torch.manual_seed(5)
        loss = seg.mask_head.loss(output, labels)["loss"]
    loss.backward()
    return {
        "masks": output.mask_logits[-1].detach().float(),
        "classes": output.class_logits[-1].detach().float(),
        "loss": loss.detach(),
        "grads": {n: p.grad.clone() for n, p in seg.named_parameters() if p.grad is not None},
        "frozen_grads": [n for n, p in seg.named_parameters() if not p.requires_grad and p.grad is not None],
    }


def assert_same_step(got: dict, expected: dict, exact: bool = False, rtol: float = 1e-4) -> None:
    """Equal outputs, loss and gradients of every trainable parameter, and no gradient on a frozen one.

    A gradient's absolute tolerance is relative to the largest gradient: several (attention key biases, biases
    before a GroupNorm) are zero in exact arithmetic, so only rounding is left in them. ``rtol`` 1e-3 on CUDA,
    where kernels (and inductor's fused ones) sum in other orders.
    """
    assert not got["frozen_grads"] and not expected["frozen_grads"]
    assert got["grads"].keys() == expected["grads"].keys() and got["grads"]
    if exact:
        assert torch.equal(got["masks"], expected["masks"]) and torch.equal(got["loss"], expected["loss"])
        assert all(torch.equal(got["grads"][n], g) for n, g in expected["grads"].items())
        return
    torch.testing.assert_close(got["masks"], expected["masks"], rtol=rtol, atol=rtol / 10)
    torch.testing.assert_close(got["classes"], expected["classes"], rtol=rtol, atol=rtol / 10)
    torch.testing.assert_close(got["loss"], expected["loss"], rtol=rtol / 10, atol=rtol / 100)
    scale = max(g.abs().max().item() for g in expected["grads"].values())
    for name, grad in expected["grads"].items():
        torch.testing.assert_close(got["grads"][name], grad, rtol=rtol, atol=rtol / 100 * scale, msg=name)


# --------------------------------------------------------------------------- the depth VFM in inference mode


def test_depth_vfm_in_inference_mode_keeps_no_graph_and_feeds_the_adapter(tmp_path):
    seg = build(tmp_path, "model.performance.depth_inference_mode=true").segmenter
    assert seg.depth_inference_mode
    images, labels = batch()
    tokens = seg.depth_tokens(images)
    assert all(t.grad_fn is None and not t.requires_grad for t in tokens)  # no autograd graph for the depth VFM
    assert not any(t.is_inference() for t in tokens)  # usable by the trainable adapter (saved for backward)
    got = step(seg, images, labels)
    assert seg.token_adapter.learnable_tokens_a.grad is not None  # the backward ran through the adapter
    assert_same_step(got, step(build(tmp_path).segmenter, images, labels), exact=True)


def test_depth_tokens_come_out_in_the_autocast_dtype_with_the_same_results(tmp_path):
    images, labels = batch()
    seg = build(tmp_path, "model.performance.depth_inference_mode=true").segmenter
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert {t.dtype for t in seg.depth_tokens(images)} == {torch.bfloat16}
    # DepthForge only multiplies the depth tokens, which autocast casts to bf16 anyway: the same bits
    got = step(seg, images, labels, autocast=True)
    assert_same_step(got, step(build(tmp_path).segmenter, images, labels, autocast=True), exact=True)


# --------------------------------------------------------------------------- activation checkpointing


@pytest.mark.parametrize("ablation", ["depthforge", "rein", "lora"])
def test_activation_checkpointing_changes_no_output_and_no_gradient(tmp_path, ablation):
    """LoRA lives inside the blocks: block 0's LoRA gradient is the one a reentrant checkpoint would drop."""
    images, labels = batch()
    plain = build(tmp_path, ablation=ablation).segmenter
    checkpointed = build(tmp_path, "model.performance.activation_checkpointing=true", ablation=ablation).segmenter
    assert checkpointed.visual_backbone.model.grad_checkpointing and not plain.visual_backbone.model.grad_checkpointing
    calls, steps = [], []
    for block in checkpointed.visual_backbone.model.blocks:
        block.register_forward_pre_hook(lambda *_: calls.append(1))  # (recomputation stops early: no post-hook)
    checkpointed.token_adapter.register_forward_pre_hook(lambda *_: steps.append(1))
    got = step(checkpointed, images, labels)
    # every block ran again in backward (the checkpointing is real), except block 0 when nothing in it trains: its
    # input comes from the frozen embedding, so no gradient flows through it and nothing needs recomputing
    layers = checkpointed.visual_backbone.num_layers
    assert len(calls) == 2 * layers - (0 if ablation == "lora" else 1)
    # and so did every adapter step, but LoRA's, which is the identity (its updates live in the blocks)
    assert len(steps) == (layers if ablation == "lora" else 2 * layers)
    assert_same_step(got, step(plain, images, labels))
    if ablation == "lora":  # the update inside block 0 (B starts at 0, so its gradient is the non-zero one)
        assert got["grads"]["token_adapter.lora.0.qkv.up.weight"].abs().sum() > 0


def test_activation_checkpointing_cuts_the_step_memory(tmp_path):
    images, labels = batch(size=4)
    peaks = []
    for on in (False, True):
        module = build(tmp_path, f"model.performance.activation_checkpointing={str(on).lower()}")
        seg, optimizer = module.segmenter.train(), module.build_optimizer()
        step_once = partial(benchmark.train_step, seg, optimizer, images, labels, contextlib.nullcontext)
        step_once()  # the optimiser state exists before the measured step
        peaks.append(benchmark.cpu_step_peak_bytes(step_once))
    assert 0 < peaks[1] < peaks[0]


# --------------------------------------------------------------------------- torch.compile


def test_compiling_the_blocks_changes_no_output_and_no_gradient(tmp_path):
    """The ``aot_eager`` backend: dynamo's capture and AOT autograd's joint graph, as inductor gets them, without
    inductor's C++ code generation (a minute per cold cache on this machine; the slow test below runs it)."""
    torch._dynamo.reset()
    images, labels = batch()
    seg = build(tmp_path, "model.performance.compile=blocks", "model.performance.compile_backend=aot_eager").segmenter
    blocks = seg.frozen_blocks()
    assert len(blocks) == seg.visual_backbone.num_layers + seg.depth_backbone.num_layers
    assert all(block._compiled_call_impl is not None for block in blocks)
    got = step(seg, images, labels)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # dynamo really compiled something
    assert_same_step(got, step(build(tmp_path).segmenter, images, labels))
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        ["model.performance.compile=blocks", "model.performance.compile_backend=inductor"],
        [
            "model.performance.compile=segmenter",
            "model.performance.compile_backend=aot_eager",
            "model.performance.depth_inference_mode=true",
            "model.performance.activation_checkpointing=true",
        ],
    ],
    ids=["blocks-inductor", "segmenter-with-every-switch"],
)
def test_compiled_training_step_equals_eager(tmp_path, overrides):
    """Slow: inductor's C++ compile takes about a minute on 2 cores with a cold cache; the whole segmenter traced
    with its graph breaks takes about 20 s."""
    torch._dynamo.reset()
    images, labels = batch()
    got = step(build(tmp_path, *overrides).segmenter, images, labels)
    assert_same_step(got, step(build(tmp_path).segmenter, images, labels))
    torch._dynamo.reset()


# --------------------------------------------------------------------------- the switches reach the module


def test_switches_reach_the_built_module_and_stay_out_of_checkpoints(tmp_path):
    default = build(tmp_path)
    assert default.performance == Performance()
    seg = default.segmenter
    assert not seg.visual_backbone.model.grad_checkpointing and not seg.depth_inference_mode
    assert all(block._compiled_call_impl is None for block in seg.frozen_blocks())
    assert seg._compiled_call_impl is None

    module = build(
        tmp_path,
        "model.performance.activation_checkpointing=true",
        "model.performance.depth_inference_mode=true",
        "model.performance.compile=segmenter",
        "model.performance.fused_optimizer=false",
    )
    seg = module.segmenter
    assert seg.visual_backbone.model.grad_checkpointing and seg.depth_inference_mode
    assert seg._compiled_call_impl is not None and not module.performance.fused_optimizer
    # a checkpoint records the segmenter's config only: it loads whatever switches the run had
    assert module.model_config == default.model_config
    assert set(module.segmenter.trainable_state_dict()) == set(default.segmenter.trainable_state_dict())


def test_a_wrong_switch_fails_before_the_model_is_built(tmp_path):
    with pytest.raises(ConfigTypeError, match=r"model.performance.compile='block'.*\n.*fix: .*compile=blocks"):
        build(tmp_path, "model.performance.compile=block")
    with pytest.raises(ValueError, match="compile must be null, 'segmenter' or 'blocks'"):
        Performance(compile="all")


def test_optimizer_is_fused_only_for_cuda_parameters_and_when_its_config_allows(tmp_path):
    module = build(tmp_path)
    assert not module.build_optimizer().defaults.get("fused")  # CPU parameters
    on_cuda = [{"params": [SimpleNamespace(device=torch.device("cuda", 0))]}]
    assert module._fused_kwargs(on_cuda) == {"fused": True}
    assert module._fused_kwargs([{"params": [*on_cuda[0]["params"], torch.zeros(1)]}]) == {}  # one on the CPU
    module.performance = Performance(fused_optimizer=False)
    assert module._fused_kwargs(on_cuda) == {}
    set_in_config = build(tmp_path, "+model.optimizer.fused=false")
    assert set_in_config._fused_kwargs(on_cuda) == {}  # the optimiser's own config wins
    sgd = build(tmp_path, "model.optimizer._target_=torch.optim.SGD", "~model.optimizer.betas", "~model.optimizer.eps")
    assert "fused" in sgd.optimizer_factory.func.__init__.__code__.co_varnames  # SGD takes it too: still fused
    assert sgd._fused_kwargs(on_cuda) == {"fused": True}


def test_matmul_precision_applies_to_cuda_runs_only(tmp_path):
    cfg = compose_config(["experiment=smoke", *TINY], tmp_path)
    assert cfg.matmul_precision == "high"
    trainer = build_trainer(cfg, logger=False, callbacks=[], enable_checkpointing=False)
    before = torch.get_float32_matmul_precision()
    assert apply_matmul_precision("high", trainer) is False
    assert torch.get_float32_matmul_precision() == before
    with pytest.raises(ConfigTypeError, match="matmul_precision must be one of highest, high, medium.*\n.*fix:"):
        apply_matmul_precision("tf32", trainer)


# --------------------------------------------------------------------------- on a GPU (pytest -m gpu)


@on_gpu
def test_bf16_training_step_with_every_switch_is_finite_on_gpu(tmp_path):
    module = build(
        tmp_path,
        "model.performance.compile=blocks",
        "model.performance.activation_checkpointing=true",
        "model.performance.depth_inference_mode=true",
    )
    seg = module.segmenter.cuda()
    optimizer = module.build_optimizer()
    assert optimizer.defaults.get("fused") is True
    images, labels = batch("cuda")
    losses = [benchmark.train_step(seg, optimizer, images, labels, benchmark.autocast_for("bf16", images.device))]
    losses.append(benchmark.train_step(seg, optimizer, images, labels, benchmark.autocast_for("bf16", images.device)))
    assert all(torch.isfinite(loss) for loss in losses)
    assert all(p.grad is None for p in seg.visual_backbone.parameters())
    torch._dynamo.reset()


@on_gpu
@pytest.mark.parametrize("target, backend", [("blocks", "inductor"), ("segmenter", "aot_eager")])
def test_compiled_step_equals_eager_on_gpu(tmp_path, target, backend):
    """Inductor's CUDA kernels for the blocks (the benchmark's compiled rows); the whole segmenter's capture on CUDA
    tensors with ``aot_eager`` (inductor on every fragment between its graph breaks would take minutes)."""
    torch._dynamo.reset()
    images, labels = batch("cuda")
    overrides = [f"model.performance.compile={target}", f"model.performance.compile_backend={backend}"]
    got = step(build(tmp_path, *overrides).segmenter.cuda(), images, labels)
    assert_same_step(got, step(build(tmp_path).segmenter.cuda(), images, labels), rtol=1e-3)
    torch._dynamo.reset()


@on_gpu
def test_fused_adamw_equals_foreach_on_gpu(tmp_path):
    """The same gradients into both optimisers (the model's own backward is not bit-reproducible on CUDA)."""
    images, labels = batch("cuda")
    module = build(tmp_path)
    seg = module.segmenter.cuda()
    step(seg, images, labels)
    grads = {n: p.grad.clone() for n, p in seg.named_parameters() if p.grad is not None}
    start = {n: p.detach().clone() for n, p in seg.named_parameters() if p.requires_grad}
    weights = []
    for fused in (True, False):
        module.performance = Performance(fused_optimizer=fused)
        with torch.no_grad():
            for name, param in seg.named_parameters():
                if param.requires_grad:
                    param.copy_(start[name])
        optimizer = module.build_optimizer()
        assert bool(optimizer.defaults.get("fused")) is fused
        for _ in range(3):
            for name, param in seg.named_parameters():
                param.grad = grads[name].clone() if name in grads else None
            optimizer.step()
        weights.append({n: p.detach().clone() for n, p in seg.named_parameters() if p.requires_grad})
    for name, value in weights[1].items():
        torch.testing.assert_close(weights[0][name], value, rtol=1e-5, atol=1e-7, msg=name)


@on_gpu
def test_matmul_precision_high_is_applied_on_gpu(tmp_path):
    cfg = compose_config(["experiment=smoke", *TINY, "trainer=gpu"], tmp_path)
    trainer = build_trainer(cfg, logger=False, callbacks=[], enable_checkpointing=False)
    before = torch.get_float32_matmul_precision()
    try:
        assert apply_matmul_precision("high", trainer) is True
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)
