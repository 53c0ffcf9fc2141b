"""scripts/minidg_sweep.py: each run is a fork that trains through `python -m src.train`; a failed run is reported."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from src.metrics import mean_miou
from src.minidg.analysis import load_run
from src.utils.checkpoint import CheckpointError

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "minidg_sweep.py"


@pytest.fixture(scope="module")
def sweep():
    environ = dict(os.environ)  # the script sets one-thread defaults for its runs; keep them out of other tests
    spec = importlib.util.spec_from_file_location("minidg_sweep", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    os.environ.clear()
    os.environ.update(environ)
    return module


def tiny_args(sweep, tmp_path: Path, *extra: str, flags: tuple[str, ...] = ()):
    overrides = "data.prepare.num_train=8 data.prepare.num_test=2 +data.prepare.workers=1 data.batch_size=2"
    overrides += " callbacks.model_checkpoint.every_n_train_steps=2"
    return sweep.parse_args(
        ["--seeds", "0", "--methods", "frozen", "rein", "--steps", "2", *flags]
        + ["--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out"), *overrides.split(), *extra]
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="runs are forked on Linux only")
def test_forked_runs_train_and_report_every_domain(sweep, tmp_path: Path) -> None:
    args = tiny_args(sweep, tmp_path)
    assert args.fork
    sweep.prepare_data(args)  # the tree the runs ask for, written once before they start in parallel
    meta = (tmp_path / "data" / "minidg" / "minidg.json").read_text()
    assert '"num_train": 8' in meta and '"num_test": 2' in meta
    results = sweep.run_all([("frozen", 0), ("rein", 0)], args)
    assert sorted((method, seed) for method, seed, *_ in results) == [("frozen", 0), ("rein", 0)]
    for method, seed, metrics, wall in results:
        run_dir = tmp_path / "out" / f"{method}_seed{seed}"
        assert (run_dir / "checkpoints" / "last.ckpt").is_file()
        assert (run_dir / "output.log").is_file() and (run_dir / ".hydra" / "config.yaml").is_file()
        assert set(metrics) == {"day", "night", "fog", "snow", sweep.MEAN}
        assert all(0.0 <= v <= 100.0 for v in metrics.values())
        shifted = mean_miou({d: {"mIoU": v} for d, v in metrics.items()}, ["night", "fog", "snow"])
        assert metrics[sweep.MEAN] == pytest.approx(float(shifted), abs=1e-4)  # the run's own mean_mIoU
        assert wall > 0
    # each run got its own method: REIN's checkpoint holds its tokens, the frozen baseline's does not
    keys = {
        method: torch.load(tmp_path / "out" / f"{method}_seed0" / "checkpoints" / "last.ckpt", weights_only=True)[
            "state_dict"
        ].keys()
        for method in ("frozen", "rein")
    }
    assert any("learnable_tokens" in k for k in keys["rein"])
    assert not any("learnable_tokens" in k for k in keys["frozen"])
    table = sweep.table(results, args.methods, ["night", "fog", "snow"])
    assert "| frozen | 1 |" in table and "| rein | 1 |" in table and "mean shifted (night, fog, snow)" in table
    # the analyses load a run as src.eval/src.predict do: its own config, its checkpoint checked against it
    run_dir = tmp_path / "out" / "rein_seed0"
    tokens = load_run(run_dir).segmenter.token_adapter.learnable_tokens_b
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert torch.equal(tokens, saved["segmenter.token_adapter.learnable_tokens_b"])
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    cfg.model.segmenter.token_adapter.rank = 8  # a config the checkpoint was not made for
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    with pytest.raises(CheckpointError, match="token_adapter.rank"):
        load_run(run_dir)


def test_a_failed_run_names_its_command_and_log(sweep, tmp_path: Path) -> None:
    """Through the fresh-interpreter path (`--no-fork`, the default off Linux) this time."""
    args = tiny_args(sweep, tmp_path, "model.no_such_key=1", flags=("--no-fork",))
    assert not args.fork
    with pytest.raises(RuntimeError, match=r"ablation=frozen seed=0 .* failed \(exit 1\); see .*output\.log") as info:
        sweep.run_all([("frozen", 0)], args)
    log = Path(str(info.value).rsplit("see ", 1)[1])
    assert "no_such_key" in log.read_text()
