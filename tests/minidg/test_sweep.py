"""scripts/minidg_sweep.py: each run is a fork that trains through `python -m src.train`; a failed run is reported;
the report's tables, statistics and verdict."""

from __future__ import annotations

import importlib.util
import os
import sys
import time
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
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    os.environ.clear()
    os.environ.update(environ)
    return module


def tiny_args(sweep, tmp_path: Path, *extra: str, flags: tuple[str, ...] = ()):
    overrides = "data.prepare.num_train=8 data.prepare.num_test=2 +data.prepare.workers=1 data.batch_size=2"
    overrides += " callbacks.model_checkpoint.every_n_train_steps=2"
    return sweep.parse_args(
        ["--seeds", "0", "--methods", "frozen", "rein", "--baselines", "--steps", "2", *flags]
        + ["--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out"), *overrides.split(), *extra]
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="runs are forked on Linux only")
def test_forked_runs_train_and_report_every_domain(sweep, tmp_path: Path) -> None:
    args = tiny_args(sweep, tmp_path)
    assert args.fork
    sweep.prepare_data(args)  # the tree the runs ask for, written once before they start in parallel
    meta = (tmp_path / "data" / "minidg" / "minidg.json").read_text()
    assert '"num_train": 8' in meta and '"num_test": 2' in meta
    assert sweep.preload_data(args) == 8 + 4 * 2  # decoded once here, for the forked runs to share
    results = sweep.run_all(sweep.sweep_jobs(args), args)
    assert sorted((r.method, r.seed) for r in results) == [("frozen", 0), ("rein", 0)]
    for r in results:
        method, seed, metrics, wall = r.method, r.seed, r.metrics, r.wall
        run_dir = tmp_path / "out" / f"{method}_seed{seed}"
        assert (run_dir / "checkpoints" / "last.ckpt").is_file()
        assert (run_dir / "output.log").is_file() and (run_dir / ".hydra" / "config.yaml").is_file()
        assert set(metrics) == {"day", "night", "fog", "snow", sweep.MEAN}
        assert all(0.0 <= v <= 100.0 for v in metrics.values())
        shifted = mean_miou({d: {"mIoU": v} for d, v in metrics.items()}, ["night", "fog", "snow"])
        assert metrics[sweep.MEAN] == pytest.approx(float(shifted), abs=1e-4)  # the run's own mean_mIoU
        assert wall > 0 and 0 < r.cpu < 10 * wall  # the run's own CPU seconds, written by its process
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
    assert "no statistics on 1 common seed(s)" in sweep.statistics_report(results, args.methods)
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


def test_a_fresh_interpreter_run_is_reaped_with_its_cpu_seconds(sweep, tmp_path: Path) -> None:
    """`--no-fork` runs are reaped with os.wait4, which gives their CPU time."""
    args = tiny_args(sweep, tmp_path, flags=("--no-fork",))
    proc = sweep.subprocess.Popen([sys.executable, "-c", "sum(range(3_000_000))"])
    job = sweep._Running(proc, "frozen", 0)
    while (code := sweep._poll(job, args.out)) is None:
        time.sleep(0.01)
    assert code == 0 and 0 < job.cpu < 30


def _fake_results(sweep) -> list:
    """Five seeds of two methods and two of a baseline, with made-up metrics."""
    shifted = {
        "depthforge": [23.5, 23.7, 24.1, 23.7, 23.5],
        "rein": [24.2, 23.0, 22.5, 24.0, 21.8],
        "frozen": [22.5, 22.8],
    }
    results = []
    for method, values in shifted.items():
        for seed, mean in enumerate(values):
            metrics = {
                "day": 40.0 + seed / 10,
                "night": mean - 1,
                "fog": mean + 1.5,
                "snow": mean - 0.5,
                sweep.MEAN: mean,
            }
            results.append(sweep.RunResult(method, seed, metrics, wall=100.0 + seed, cpu=90.0 + seed))
    return results


def test_the_report_tables_statistics_and_verdict(sweep, tmp_path: Path) -> None:
    from scipy import stats as scipy_stats

    args = sweep.parse_args([])  # the defaults: 5 seeds of the two methods, the frozen baseline on 2
    assert (args.seeds, args.methods, args.baselines, args.baseline_seeds) == (
        [0, 1, 2, 3, 4],
        ["depthforge", "rein"],
        ["frozen"],
        [0, 1],
    )
    jobs = sweep.sweep_jobs(args)
    assert (
        len(jobs) == 12 and jobs[:2] == [("depthforge", 0), ("rein", 0)] and jobs[-2:] == [("frozen", 0), ("frozen", 1)]
    )
    results = _fake_results(sweep)
    table = sweep.table(results, sweep.all_methods(args), ["night", "fog", "snow"])
    assert "| depthforge | 5 | 40.2 ± 0.2 | 22.7 ± 0.2 | 25.2 ± 0.2 | 23.2 ± 0.2 | **23.7 ± 0.2** |" in table
    assert "| frozen | 2 |" in table and "| frozen | 1 | 40.1 | 21.8 | 24.3 | 22.3 | 22.8 | 101 | 91 |" in table
    report = sweep.statistics_report(results, args.methods)
    dfm, rein = [23.5, 23.7, 24.1, 23.7, 23.5], [24.2, 23.0, 22.5, 24.0, 21.8]
    paired, welch = scipy_stats.ttest_rel(dfm, rein), scipy_stats.ttest_ind(dfm, rein, equal_var=False)
    verdict = next(line for line in report.splitlines() if line.startswith("Verdict: "))
    assert verdict == (
        f"Verdict: depthforge − rein = +0.60 ± 1.09 mIoU on the shifted mean (5 seeds, depthforge ahead on 3): "
        f"paired t = {paired.statistic:.2f}, df = 4, p = {paired.pvalue:.3f}; Welch t = {welch.statistic:.2f}, "
        f"df = {welch.df:.1f}, p = {welch.pvalue:.3f}: not significant at 5%"
    )
    rows = [line for line in report.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0] for row in rows[1:]] == ["| mean shifted", "| day", "| night", "| fog", "| snow"]
    assert "| -0.70, +0.70, +1.60, -0.30, +1.70 | +0.60 ± 1.09 |" in rows[1]
    sweep.write_runs_csv(results, tmp_path / "runs.csv")
    lines = (tmp_path / "runs.csv").read_text().splitlines()
    assert lines[0] == "method,seed,day,night,fog,snow,mean,wall_s,cpu_s" and len(lines) == 13
