"""docs/extending.md, run as written: its marked code blocks are copied into a temporary folder and used exactly as
the page tells a user to — the new adapter trains through ``python -m src.train`` with its own module and config
file, the new dataset is generated, checked and loaded as a target domain, the new backbone family runs a segmenter.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import hydra
import pytest
import torch

from src.models.adapters.base import Adapter
from src.utils.checkpoint import safe_torch_load
from src.utils.instantiate import build_module
from tests.conftest import compose_config

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- file: (?P<path>\S+) -->\n```\w*\n(?P<body>.*?)```", re.S)


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory) -> Path:
    """The page's files, written where a user would keep them (outside the repository)."""
    root = tmp_path_factory.mktemp("user")
    blocks = BLOCK.findall((ROOT / "docs" / "extending.md").read_text())
    assert {"my_methods/depth_tokens.py", "my_conf/model/adapter/depth_tokens.yaml"} <= {p for p, _ in blocks}
    for rel, body in blocks:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(body)
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))


def test_a_new_adapter_trains_through_src_train(user_dir: Path, tmp_path: Path) -> None:
    """Its module file and one config file; no head option, no name rule: its declarations do the wiring."""
    run = tmp_path / "run"
    steps = ["trainer.max_steps=2", "trainer.val_check_interval=2", "callbacks.model_checkpoint.every_n_train_steps=2"]
    command = [
        sys.executable, "-m", "src.train", "experiment=smoke", "model/adapter=depth_tokens", *steps,
        "trainer.log_every_n_steps=1", f"hydra.searchpath=[file://{user_dir / 'my_conf'}]", f"hydra.run.dir={run}",
        f"paths.data_dir={tmp_path / 'data'}", "data.prepare.num_images=4",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(user_dir), str(ROOT)])}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    rows = list(csv.DictReader((run / "csv" / "version_0" / "metrics.csv").open()))
    assert len([r for r in rows if r.get("train/loss")]) == 2
    assert any(r.get("train/depth_tokens_scale") for r in rows)  # its log_scalars()
    assert any(r.get("val/mean_mIoU") for r in rows)
    ckpt = safe_torch_load(run / "checkpoints" / "last.ckpt")
    keys = set(ckpt["state_dict"])
    assert {"segmenter.token_adapter.tokens", "segmenter.token_adapter.scales"} <= keys
    assert "segmenter.mask_head.query_feat.weight" in keys  # no queries provided: the head learns its own
    assert not any(k.startswith(("segmenter.visual_backbone.", "segmenter.depth_backbone.")) for k in keys)
    groups = ckpt["optimizer_states"][0]["param_groups"]
    decay = {name: g["weight_decay"] for g in groups for name in g["param_names"]}
    assert decay["token_adapter.tokens"] == decay["token_adapter.scales"] == 0.0  # its no_weight_decay()
    assert decay["mask_head.class_predictor.weight"] == 0.05


def test_a_new_dataset_is_generated_checked_and_read_as_a_target(user_dir: Path, tmp_path: Path) -> None:
    from my_datasets.dark_zurich import DarkZurichDataset

    from src.data.checks import check_data_root
    from src.data.synthetic import write_dataset

    data = tmp_path / "data"
    write_dataset("dark_zurich", data / DarkZurichDataset.default_dir, num_images=3, size=(64, 32))
    dataset = DarkZurichDataset(data / "dark_zurich")
    assert [s.name for s in dataset.samples] == [DarkZurichDataset.synthetic_stem("val", i) for i in range(3)]
    (result,) = check_data_root(data, datasets=("dark_zurich",))
    assert result.ok and result.found == 3 and "differs from the official 50" in result.format()

    write_dataset("cityscapes", data / "cityscapes", num_images=2, size=(64, 32))
    write_dataset("acdc", data / "acdc", num_images=2, size=(64, 32))
    cfg = compose_config(
        [
            "experiment=citys2acdc",
            "data/targets=acdc_dz",
            f"hydra.searchpath=[file://{user_dir / 'my_conf'}]",
            f"paths.data_dir={data}",
            "data.targets.bdd=null",
            "data.targets.map=null",
            "data.num_workers=0",
        ],
        tmp_path / "out",
    )
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup("validate")
    assert datamodule.target_names[-1] == "dz" and datamodule.mean_domains == ["snow", "night", "fog", "rain"]
    batch = next(iter(datamodule.val_dataloader()[-1]))
    assert batch["label"].shape == (1, 32, 64) and batch["image"].shape[1] == 3


def test_a_new_backbone_family_builds_from_its_config_and_trains(user_dir: Path, tmp_path: Path) -> None:
    cfg = compose_config(
        [
            "experiment=smoke",
            "model/backbone=beit_b",
            f"hydra.searchpath=[file://{user_dir / 'my_conf'}]",
            "model.segmenter.visual_backbone.img_size=64",
            "+model.segmenter.visual_backbone.model_kwargs={embed_dim: 64, depth: 2, num_heads: 2}",
            "ablation=rein",
        ],
        tmp_path,
    )
    torch.manual_seed(0)
    segmenter = build_module(cfg).segmenter  # imports my_backbones.beit (the config's `imports`), then builds
    backbone = segmenter.visual_backbone
    from timm.models.beit import Beit

    assert isinstance(backbone.model, Beit)

    images = torch.randn(2, 3, 64, 64)
    before_norm = {}
    backbone.model.norm.register_forward_hook(lambda m, args, out: before_norm.setdefault("x", args[0]))
    backbone.model.forward_features(images)  # timm's own forward
    recorded = {}

    class Record(Adapter):  # records each block's patch tokens
        def forward(self, tokens, layer, depth=None, grid=None):
            recorded[layer] = tokens
            return tokens

    backbone(images, Record())
    torch.testing.assert_close(recorded[1], before_norm["x"][:, 1:], rtol=0, atol=0)

    segmenter.loss(images, torch.randint(0, 19, (2, 64, 64)))["loss"].backward()
    assert segmenter.token_adapter.learnable_tokens_a.grad.abs().sum() > 0
    assert all(p.grad is None for p in backbone.parameters())
