"""Every experiment and ablation config composes, and the parts it names instantiate (tiny sizes)."""

from __future__ import annotations

import hydra
import pytest
import torch

from src.models.segmenter import Segmenter, apply_multipliers
from src.utils.instantiate import build_module, build_trainer
from tests.conftest import CONF_DIR, TINY, compose_config

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
ABLATIONS = sorted(p.stem for p in (CONF_DIR / "ablation").glob("*.yaml"))
EXPECTED_TARGETS = {
    "gta2citys": ["citys", "bdd", "map"],
    "citys2acdc": ["bdd", "map", "snow", "night", "fog", "rain"],
    "citys2bdd_map_gta": ["bdd", "map", "gta"],
}


def test_the_paper_settings_are_there():
    assert {"gta2citys", "citys2acdc", "citys2bdd_map_gta", "smoke"} <= set(EXPERIMENTS)
    assert {"rein", "da_ao", "drd", "depthforge", "frozen", "full", "lora", "adaptformer", "vpt", "fada"} <= set(
        ABLATIONS
    )


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_instantiates(experiment, data_root, tmp_path):
    small = [f"paths.data_dir={data_root}", "data.batch_size=2", "data.num_workers=0"]
    overrides = [f"experiment={experiment}", *TINY, *small]
    if experiment == "minidg":  # its own tiny pretrained VFMs; only the data is redirected and made small
        overrides = [f"experiment={experiment}", *small, "data.prepare.num_train=4", "data.prepare.num_test=2"]
    cfg = compose_config(overrides, tmp_path)
    module = build_module(cfg)
    assert isinstance(module.segmenter, Segmenter)
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    if experiment in EXPECTED_TARGETS:
        assert datamodule.target_names == EXPECTED_TARGETS[experiment]
    assert len(datamodule.source) > 0 and all(len(d) > 0 for d in datamodule.targets.values())
    batch = next(iter(datamodule.train_dataloader()))
    assert (
        batch["image"].shape[0] == cfg.data.batch_size
        and batch["label"].shape == batch["image"].shape[:1] + batch["image"].shape[2:]
    )
    build_trainer(cfg, logger=False)  # the trainer config (plugins, callbacks) instantiates too


def test_paper_recipe_values(tmp_path):
    cfg = compose_config(["experiment=gta2citys"], tmp_path)
    assert cfg.trainer.max_steps == 50000 and cfg.data.batch_size == 5 and cfg.trainer.precision == "bf16-mixed"
    assert cfg.model.optimizer.lr == 1e-4 and cfg.model.optimizer.weight_decay == 0.05
    assert cfg.model.slide == {"crop": 512, "stride": 341, "max_batch": None}
    assert cfg.model.segmenter.visual_backbone.model_name == "vit_large_patch14_dinov2.lvd142m"
    assert compose_config(["experiment=citys2acdc"], tmp_path).trainer.max_steps == 40000
    acdc = compose_config(["experiment=citys2acdc"], tmp_path)
    assert list(acdc.data.mean_domains) == ["snow", "night", "fog", "rain"]


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_ablation_builds_and_trains_one_step(ablation, tmp_path):
    """Every ablation composes, and the composed model is what its parts declare: the depth VFM exists iff the
    adapter reads depth, the head uses the adapter's queries iff it provides them, the optimiser holds exactly
    the trainable parameters with no weight decay exactly on those the parts name, and a step's gradients reach
    trainable parameters only."""
    overrides = ["experiment=smoke", *TINY, f"ablation={ablation}"]
    if ablation == "prompt_da":  # the tiny random depth model, built as Prompt Depth Anything
        overrides.append("model.segmenter.depth_backbone.model_type=prompt_depth_anything")
    cfg = compose_config(overrides, tmp_path)
    module = build_module(cfg)
    seg, adapter = module.segmenter, module.segmenter.token_adapter
    assert (seg.depth_backbone is not None) == adapter.uses_depth
    assert seg.mask_head.replace_query_feat == adapter.provides_queries
    assert (adapter.queries() is not None) == adapter.provides_queries
    assert (seg.refinement_decoder is not None) == (cfg.model.segmenter.get("refinement_decoder") is not None)

    optimizer = cfg_optimizer(module)
    trainable = {n for n, p in seg.named_parameters() if p.requires_grad}
    decay = {n: g["weight_decay"] for g in optimizer.param_groups for n in g["param_names"]}
    assert set(decay) == trainable and sum(len(g["params"]) for g in optimizer.param_groups) == len(trainable)
    declared = seg.no_weight_decay()
    assert declared <= {n for n, _ in seg.named_parameters()}  # a declaration names real parameters
    assert {n for n, wd in decay.items() if wd == 0.0} == declared & trainable
    assert all(wd == cfg.model.optimizer.weight_decay for n, wd in decay.items() if n not in declared)

    images, labels = torch.randn(2, 3, 64, 64), torch.randint(0, 19, (2, 64, 64))
    seg.loss(images, labels)["loss"].backward()
    assert all(p.grad is None for p in seg.parameters() if not p.requires_grad)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in seg.parameters() if p.requires_grad)


def cfg_optimizer(module) -> torch.optim.Optimizer:
    optimizer = module.optimizer_factory(module.segmenter.param_groups())
    apply_multipliers(optimizer)
    return optimizer


def test_slurm_launcher_config_composes(tmp_path):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=citys2acdc", "hydra/launcher=slurm"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher") and cfg.hydra.launcher.gpus_per_node == 1
