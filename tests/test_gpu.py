"""GPU paths (run with `pytest -m gpu` on a CUDA machine): bf16 mixed-precision training and compile."""

from __future__ import annotations

import pytest
import torch

from src.utils.instantiate import build_module, build_trainer
from tests.conftest import TINY, compose_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (select with -m gpu)"),
]


def test_bf16_train_step_and_slide_inference_on_gpu(tmp_path):
    cfg = compose_config(["experiment=smoke", *TINY], tmp_path)
    seg = build_module(cfg).segmenter.cuda()
    images = torch.randn(2, 3, 64, 64, device="cuda")
    labels = torch.randint(0, 19, (2, 64, 64), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = seg.mask_head.loss(seg(images), labels)["loss"]
    loss.backward()
    assert torch.isfinite(loss) and seg.token_adapter.learnable_tokens_a.grad is not None
    assert all(p.grad is None for p in seg.visual_backbone.parameters())
    assert seg.predict(images).dtype == torch.float32


def test_trainer_gpu_config_runs_bf16_mixed(tmp_path):
    cfg = compose_config(
        ["experiment=smoke", *TINY, "trainer=gpu", "trainer.max_steps=2", f"paths.data_dir={tmp_path}"], tmp_path
    )
    trainer = build_trainer(cfg, logger=False, callbacks=[], enable_checkpointing=False, limit_val_batches=0)
    assert trainer.precision == "bf16-mixed"
    import hydra

    trainer.fit(build_module(cfg), datamodule=hydra.utils.instantiate(cfg.data))
    assert trainer.global_step == 2
