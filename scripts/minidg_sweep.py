"""MiniDG sweep: REIN vs DepthForge (vs the frozen baseline) over seeds, on a CPU, and the per-domain table.

    python scripts/minidg_sweep.py                                  # 3 seeds x {depthforge, rein, frozen}
    python scripts/minidg_sweep.py --seeds 0 --methods depthforge rein --steps 300

Each run is `python -m src.train experiment=minidg ablation=<method> seed=<seed>` with one thread, in its own
process; `--jobs` runs go in parallel. On Linux the processes are forks of this one, made after it has imported the
training stack once, so the runs do not each pay the ~15 s of imports (`--no-fork` starts fresh interpreters, the
default elsewhere). The data is written once first. The table (mean ± std over seeds of the final validation mIoU
per domain, and the mean over the shifted domains) is printed and written to <out>/results.md with the command,
the wall time and the CPU time of all processes. The domains and the mean are the runs' own: each run's
`val/<domain>/mIoU` and `val/mean_mIoU` (over its `data.mean_domains`), as `src.train` logs them.
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing
import multiprocessing.process
import os
import runpy
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

try:
    import resource  # CPU time of the runs; not on Windows
except ImportError:  # pragma: no cover
    resource = None

STARTED = time.time()  # the sweep's wall time counts its own imports

# one thread per run (set before torch is imported, so that the forked runs inherit it) and no Hub access
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import hydra  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import src.train  # noqa: E402,F401  (the whole training stack, imported once and inherited by the forked runs)
from src.minidg.analysis import format_attention_table, load_run, token_attention  # noqa: E402

MEAN = "mean"
"""The key of a run's `val/mean_mIoU` in `final_metrics`."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=["depthforge", "rein", "frozen"], help="conf/ablation names")
    p.add_argument("--steps", type=int, default=None, help="override trainer.max_steps (default: the experiment's)")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel, one thread each")
    p.add_argument("--data-dir", type=Path, default=ROOT / "data")
    p.add_argument("--out", type=Path, default=ROOT / "logs" / "minidg_sweep")
    p.add_argument(
        "--no-fork",
        dest="fork",
        action="store_false",
        default=sys.platform.startswith("linux"),
        help="start each run as `python -m src.train` instead of forking this process (the default off Linux)",
    )
    p.add_argument("--no-attention", dest="attention", action="store_false", help="skip the token-attention table")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    return p.parse_args(argv)


def run_overrides(method: str, seed: int, args: argparse.Namespace) -> list[str]:
    overrides = ["experiment=minidg", f"ablation={method}", f"seed={seed}", f"paths.data_dir={args.data_dir}"]
    if args.steps:
        overrides += [f"trainer.max_steps={args.steps}", f"trainer.val_check_interval={args.steps}"]
    return [*overrides, *args.overrides]


def run_argv(method: str, seed: int, args: argparse.Namespace) -> list[str]:
    """The `python -m src.train` arguments of one run (data in the main process, no progress bar)."""
    return [
        *run_overrides(method, seed, args),
        f"hydra.run.dir={args.out / f'{method}_seed{seed}'}",
        "data.num_workers=0",
        "data.persistent_workers=false",
        "+trainer.enable_progress_bar=false",
    ]


def compose_run(method: str, seed: int, args: argparse.Namespace) -> DictConfig:
    """The composed config of one run (what `python -m src.train` would run)."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=[*run_overrides(method, seed, args), f"paths.output_dir={args.out}"])


def prepare_data(args: argparse.Namespace) -> None:
    """Write the MiniDG tree the runs ask for (`data.prepare`, overrides included) unless it is up to date: the
    runs' own `DGDataModule.prepare_data`, called once here so that the parallel runs do not race to write it."""
    hydra.utils.instantiate(compose_run(args.methods[0], args.seeds[0], args).data).prepare_data()


def run_one(method: str, seed: int, args: argparse.Namespace) -> None:
    """The body of a run's process (forked for it alone): train, with all output in <run dir>/output.log."""
    run_dir = args.out / f"{method}_seed{seed}"
    with open(run_dir / "output.log", "w") as log:  # the process exists for this run only, so redirect for good
        sys.stdout.flush(), sys.stderr.flush()
        os.dup2(log.fileno(), 1), os.dup2(log.fileno(), 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # Python-level writes too, whatever sys.stdout was
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    torch.set_num_threads(1)
    sys.argv = ["src.train", *run_argv(method, seed, args)]
    # exactly `python -m src.train ...`: the module's code runs as __main__ (its imports are already loaded), so
    # Hydra finds conf/ the same way; a failed run raises or exits non-zero, and run_all reports it
    runpy.run_module("src.train", run_name="__main__", alter_sys=True)


Process = multiprocessing.process.BaseProcess | subprocess.Popen


def start_run(method: str, seed: int, args: argparse.Namespace) -> Process:
    """Start one run in its own process.

    With ``args.fork`` (the default on Linux) the process is a fork of this one and shares its imports; otherwise
    it is a fresh `python -m src.train` (macOS and Windows, where forking a process that loaded torch is unsafe).
    """
    run_dir = args.out / f"{method}_seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    if args.fork:
        proc = multiprocessing.get_context("fork").Process(target=run_one, args=(method, seed, args))
        proc.start()
        return proc
    cmd = [sys.executable, "-m", "src.train", *run_argv(method, seed, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(run_dir / "output.log", "w") as log:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def exit_code(proc: Process) -> int | None:
    """The run's exit code, None while it runs."""
    return proc.poll() if isinstance(proc, subprocess.Popen) else proc.exitcode


def run_all(jobs: list[tuple[str, int]], args: argparse.Namespace) -> list[tuple[str, int, dict[str, float], float]]:
    """Run the jobs, ``args.jobs`` at a time, each in its own process (`start_run`), so that the runs are isolated
    from each other. Returns (method, seed, final metrics, wall seconds) per job, in the order they finish. A failed
    run stops the others and raises with its command and log."""
    pending, running, results = list(jobs), [], []
    while pending or running:
        while pending and len(running) < args.jobs:
            method, seed = pending.pop(0)
            running.append((start_run(method, seed, args), method, seed, time.time()))
        time.sleep(0.2)
        for job in [job for job in running if exit_code(job[0]) is not None]:
            running.remove(job)
            proc, method, seed, started = job
            if exit_code(proc) != 0:
                for other, *_ in running:
                    other.terminate()
                argv = shlex.join(run_argv(method, seed, args))
                log = args.out / f"{method}_seed{seed}" / "output.log"
                raise RuntimeError(f"python -m src.train {argv} failed (exit {exit_code(proc)}); see {log}")
            results.append((method, seed, final_metrics(args.out / f"{method}_seed{seed}"), time.time() - started))
    return results


def final_metrics(run_dir: Path) -> dict[str, float]:
    """The last validation row of the run's CSV log: mIoU per domain of the run's config (`data.targets`), and
    under `MEAN` the run's own mean over its `data.mean_domains`."""
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    rows = [r for r in csv.DictReader(next((run_dir / "csv").rglob("metrics.csv")).open()) if r.get("val/mean_mIoU")]
    return {**{d: float(rows[-1][f"val/{d}/mIoU"]) for d in cfg.data.targets}, MEAN: float(rows[-1]["val/mean_mIoU"])}


def attention_report(method: str, seed: int, args: argparse.Namespace) -> dict[str, list[float]] | None:
    """Token-attention statistics of a finished run (src.minidg.analysis.token_attention); None without tokens."""
    segmenter = load_run(args.out / f"{method}_seed{seed}").segmenter
    if not hasattr(segmenter.token_adapter, "attention"):
        return None
    return token_attention(segmenter)


def table(results: list[tuple[str, int, dict[str, float], float]], methods: list[str], mean_domains: list[str]) -> str:
    """Per method, mean ± std over seeds of each domain's mIoU and of the runs' own mean over the shifted domains
    (``mean_domains``, named in the header); then one row per run."""

    def cell(values: list[float]) -> str:
        return (
            f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else f"{values[0]:.1f}"
        )

    domains = [d for d in results[0][2] if d != MEAN]
    lines = [
        "| method | seeds | " + " | ".join(domains) + f" | mean shifted ({', '.join(mean_domains)}) |",
        "|---|---|" + "---|" * (len(domains) + 1),
    ]
    for method in methods:
        runs = [r for r in results if r[0] == method]
        cells = [cell([r[2][d] for r in runs]) for d in (*domains, MEAN)]
        lines.append(f"| {method} | {len(runs)} | " + " | ".join(cells[:-1]) + f" | **{cells[-1]}** |")
    lines += [
        "",
        "| method | seed | " + " | ".join(domains) + " | mean shifted | wall (s) |",
        "|---|---|" + "---|" * (len(domains) + 2),
    ]
    for method, seed, m, wall in sorted(results, key=lambda r: (methods.index(r[0]), r[1])):
        lines.append(
            f"| {method} | {seed} | " + " | ".join(f"{m[d]:.1f}" for d in (*domains, MEAN)) + f" | {wall:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    prepare_data(args)  # once, before the parallel runs (which then find it up to date)
    mean_domains = list(compose_run(args.methods[0], args.seeds[0], args).data.mean_domains)
    jobs = [(m, s) for s in args.seeds for m in args.methods]
    results = run_all(jobs, args)
    wall = time.time() - STARTED
    cpu = "CPU time not measured (no `resource` module)"
    if resource is not None:  # this process (imports, data check) and every run, waited for above
        usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
        cpu = f"{sum(u.ru_utime + u.ru_stime for u in usage) / 60:.1f} CPU-min"
    command = shlex.join(
        [Path(sys.executable).name, "scripts/minidg_sweep.py", *(argv if argv is not None else sys.argv[1:])]
    )
    report = (
        f"{table(results, args.methods, mean_domains)}\n\nCommand: `{command}` — {len(jobs)} runs, "
        f"{args.jobs} in parallel (one thread each): {wall / 60:.1f} min wall and {cpu} (user + system time of the "
        "sweep process and all its runs, imports and the data check included; the analysis below is not).\n"
    )
    if args.attention:
        stats = {m: attention_report(m, args.seeds[0], args) for m in args.methods}
        stats = {m: s for m, s in stats.items() if s is not None}
        if stats:
            report += f"\nToken attention after training (seed {args.seeds[0]}, 40 test scenes):\n\n"
            report += format_attention_table(stats) + "\n"
    (args.out / "results.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
