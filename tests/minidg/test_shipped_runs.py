"""The trained MiniDG runs shipped in assets/minidg/runs load through the eval path and segment MiniDG scenes."""

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from src.minidg import dataset as minidg_dataset
from src.minidg.analysis import RUN_CONFIG, RUN_WEIGHTS, export_run, load_run
from src.minidg.vfms import normalize

ROOT = Path(__file__).resolve().parents[2]
RUNS = ROOT / "assets" / "minidg" / "runs"


@pytest.mark.parametrize(("method", "adapter"), [("depthforge", "DepthForgeAdapter"), ("rein", "ReinAdapter")])
def test_shipped_run_loads_and_segments_day_scenes(method, adapter):
    run = RUNS / method
    saved = torch.load(run / RUN_WEIGHTS, map_location="cpu", weights_only=True)
    assert set(saved) == {"state_dict", "model_config"}  # weights only: no optimiser or random state
    module = load_run(run)
    assert type(module.segmenter.token_adapter).__name__ == adapter
    state = module.segmenter.trainable_state_dict()
    assert {f"segmenter.{k}" for k in state} == set(saved["state_dict"])
    assert all(torch.equal(v, saved["state_dict"][f"segmenter.{k}"]) for k, v in state.items())
    renders, images = zip(*(minidg_dataset.test_scene(0, i) for i in range(4)))
    day = normalize(np.stack([im["day"] for im in images]))
    with torch.no_grad():
        pred = module.eval()(day, day.shape[-2:]).argmax(1).numpy()
    labels = np.stack([r.label for r in renders])
    valid = labels != 255
    # the shipped runs score about 86% pixel accuracy on day test scenes; an untrained head scores far below
    assert (pred[valid] == labels[valid]).mean() > 0.75


def test_export_run_writes_weights_only_and_refuses_its_input(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "checkpoints").mkdir()
    config = OmegaConf.load(RUNS / "rein" / RUN_CONFIG)
    config.paths.data_dir = "/somewhere/on/another/machine"
    OmegaConf.save(config, run_dir / ".hydra" / "config.yaml")
    saved = torch.load(RUNS / "rein" / RUN_WEIGHTS, map_location="cpu", weights_only=True)
    torch.save({**saved, "optimizer_states": [{"state": {}}], "rng": {"ranks": []}}, run_dir / "checkpoints/last.ckpt")
    export_run(run_dir, tmp_path / "shipped")
    written = torch.load(tmp_path / "shipped" / RUN_WEIGHTS, map_location="cpu", weights_only=True)
    assert set(written) == {"state_dict", "model_config"}
    paths = OmegaConf.to_container(OmegaConf.load(tmp_path / "shipped" / RUN_CONFIG).paths)  # unresolved
    assert paths["data_dir"] == "${oc.env:DEPTHFORGE_DATA,${paths.root_dir}/data}"  # the machine's path is gone
    with pytest.raises(ValueError, match="overwrite its input"):
        export_run(run_dir, run_dir)
    with pytest.raises(FileNotFoundError, match="is not a run"):
        load_run(tmp_path)
