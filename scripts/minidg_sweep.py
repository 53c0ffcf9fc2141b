"""MiniDG sweep: DepthForge vs REIN over seeds (and the frozen baseline on fewer), on a CPU, with the statistics.

    python scripts/minidg_sweep.py                                  # 5 seeds x {depthforge, rein}, 2 x frozen
    python scripts/minidg_sweep.py --seeds 0 --methods depthforge rein --baselines --steps 300

Each run is `python -m src.train experiment=minidg ablation=<method> seed=<seed>` with one thread (the experiment's
`callbacks.torch_threads`), in its own process; `--jobs` runs go in parallel. On Linux the processes are forks of
this one, made after it has imported the training stack and decoded the benchmark once (`data.cache_decoded`), so
the runs pay neither the ~7 s of imports nor the decoding (`--no-fork` starts fresh interpreters, the default
elsewhere). The data is written once first.

The report (printed and written to <out>/results.md, the runs to <out>/runs.csv) has the mean ± std over seeds of
the final validation mIoU per domain and of the mean over the shifted domains (each run's own `val/<domain>/mIoU`
and `val/mean_mIoU`), every run with its wall and CPU seconds, and the first two `--methods` compared on the seeds
both ran: the difference per seed (a seed fixes the data order and the augmentations of both runs), its mean ± std,
the paired and Welch t-tests with their p-values, and a one-line verdict on the shifted mean
(`src.minidg.stats`). The CPU time of the sweep counts every process: this one and all its runs.
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing
import multiprocessing.process
import os
import runpy
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
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
from src.attention import has_attention  # noqa: E402
from src.minidg.analysis import format_attention_table, load_run, token_attention  # noqa: E402
from src.minidg.stats import Comparison, compare, comparison_table, mean_std, verdict  # noqa: E402

MEAN = "mean"
"""The key of a run's `val/mean_mIoU` in `final_metrics`."""
CPU_FILE = "cpu_seconds.txt"
"""Where a forked run writes the CPU seconds its process (and any DataLoader workers) used."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="seeds of the --methods")
    p.add_argument(
        "--methods", nargs="+", default=["depthforge", "rein"], help="conf/ablation names; the first two are compared"
    )
    p.add_argument("--baselines", nargs="*", default=["frozen"], help="conf/ablation names run on --baseline-seeds")
    p.add_argument("--baseline-seeds", type=int, nargs="+", default=[0, 1])
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
    args = p.parse_args(argv)
    args.baselines = [b for b in args.baselines if b not in args.methods]
    return args


def sweep_jobs(args: argparse.Namespace) -> list[tuple[str, int]]:
    """(method, seed) of every run: the compared methods seed by seed, then the baselines."""
    return [(m, s) for s in args.seeds for m in args.methods] + [
        (b, s) for s in args.baseline_seeds for b in args.baselines
    ]


def all_methods(args: argparse.Namespace) -> list[str]:
    return [*args.methods, *args.baselines]


def run_overrides(method: str, seed: int, args: argparse.Namespace) -> list[str]:
    overrides = ["experiment=minidg", f"ablation={method}", f"seed={seed}", f"paths.data_dir={args.data_dir}"]
    if args.steps:
        overrides += [f"trainer.max_steps={args.steps}", f"trainer.val_check_interval={args.steps}"]
    return [*overrides, *args.overrides]


def run_argv(method: str, seed: int, args: argparse.Namespace) -> list[str]:
    """The `python -m src.train` arguments of one run (no progress bar: the output goes to a log file)."""
    return [
        *run_overrides(method, seed, args),
        f"hydra.run.dir={args.out / f'{method}_seed{seed}'}",
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


def preload_data(args: argparse.Namespace) -> int:
    """Decode every training and test file of the runs' data into this process's `DECODE_CACHE` (when their config
    has `data.cache_decoded`), so that forked runs share the decoded arrays instead of each decoding them again.
    Returns the number of samples read (0 when the config does not cache)."""
    datamodule = hydra.utils.instantiate(compose_run(args.methods[0], args.seeds[0], args).data)
    if not getattr(datamodule, "cache_decoded", False):
        return 0
    datamodule.setup("fit")
    datasets = [datamodule.source, *datamodule.targets.values()]
    for dataset in datasets:
        for index in range(len(dataset)):
            dataset.load(index)
    return sum(len(d) for d in datasets)


def run_one(method: str, seed: int, args: argparse.Namespace) -> None:
    """The body of a run's process (forked for it alone): train, with all output in <run dir>/output.log, and write
    the process's CPU seconds to <run dir>/cpu_seconds.txt."""
    run_dir = args.out / f"{method}_seed{seed}"
    with open(run_dir / "output.log", "w") as log:  # the process exists for this run only, so redirect for good
        sys.stdout.flush(), sys.stderr.flush()
        os.dup2(log.fileno(), 1), os.dup2(log.fileno(), 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # Python-level writes too, whatever sys.stdout was
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    torch.set_num_threads(1)
    sys.argv = ["src.train", *run_argv(method, seed, args)]
    try:
        # exactly `python -m src.train ...`: the module's code runs as __main__ (its imports are already loaded), so
        # Hydra finds conf/ the same way; a failed run raises or exits non-zero, and run_all reports it
        runpy.run_module("src.train", run_name="__main__", alter_sys=True)
    finally:
        if resource is not None:  # a forked child's counters start at zero: this is the run's own CPU time
            usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
            (run_dir / CPU_FILE).write_text(f"{sum(u.ru_utime + u.ru_stime for u in usage):.2f}\n")


Process = multiprocessing.process.BaseProcess | subprocess.Popen


@dataclass
class RunResult:
    """One finished run: its final metrics (`final_metrics`), wall seconds and CPU seconds (None if unmeasured)."""

    method: str
    seed: int
    metrics: dict[str, float]
    wall: float
    cpu: float | None = None


@dataclass
class _Running:
    proc: Process
    method: str
    seed: int
    started: float = field(default_factory=time.time)
    cpu: float | None = None


def start_run(method: str, seed: int, args: argparse.Namespace) -> Process:
    """Start one run in its own process.

    With ``args.fork`` (the default on Linux) the process is a fork of this one and shares its imports; otherwise
    it is a fresh `python -m src.train` (macOS and Windows, where forking a process that loaded torch is unsafe).
    """
    run_dir = args.out / f"{method}_seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CPU_FILE).unlink(missing_ok=True)
    if args.fork:
        proc = multiprocessing.get_context("fork").Process(target=run_one, args=(method, seed, args))
        proc.start()
        return proc
    cmd = [sys.executable, "-m", "src.train", *run_argv(method, seed, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(run_dir / "output.log", "w") as log:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def _poll(job: _Running, out: Path) -> int | None:
    """The run's exit code, None while it runs; records its CPU seconds once it has ended."""
    proc = job.proc
    if isinstance(proc, subprocess.Popen):
        if proc.returncode is None and hasattr(os, "wait4"):  # reap it ourselves, for its resource usage
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == 0:
                return None
            proc.returncode = os.waitstatus_to_exitcode(status)
            job.cpu = usage.ru_utime + usage.ru_stime
        return proc.poll()
    code = proc.exitcode
    cpu_file = out / f"{job.method}_seed{job.seed}" / CPU_FILE
    if code is not None and job.cpu is None and cpu_file.is_file():
        job.cpu = float(cpu_file.read_text())
    return code


def run_all(jobs: list[tuple[str, int]], args: argparse.Namespace) -> list[RunResult]:
    """Run the jobs, ``args.jobs`` at a time, each in its own process (`start_run`), so that the runs are isolated
    from each other. Returns one `RunResult` per job, in the order they finish. A failed run stops the others and
    raises with its command and log."""
    pending, running, results = list(jobs), [], []
    while pending or running:
        while pending and len(running) < args.jobs:
            method, seed = pending.pop(0)
            running.append(_Running(start_run(method, seed, args), method, seed))
        time.sleep(0.2)
        for job in list(running):
            code = _poll(job, args.out)
            if code is None:
                continue
            running.remove(job)
            if code != 0:
                for other in running:
                    other.proc.terminate()
                argv = shlex.join(run_argv(job.method, job.seed, args))
                log = args.out / f"{job.method}_seed{job.seed}" / "output.log"
                raise RuntimeError(f"python -m src.train {argv} failed (exit {code}); see {log}")
            metrics = final_metrics(args.out / f"{job.method}_seed{job.seed}")
            results.append(RunResult(job.method, job.seed, metrics, time.time() - job.started, job.cpu))
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
    if not has_attention(segmenter.token_adapter):
        return None
    return token_attention(segmenter)


def table(results: list[RunResult], methods: list[str], mean_domains: list[str]) -> str:
    """Per method, mean ± std over seeds of each domain's mIoU and of the runs' own mean over the shifted domains
    (``mean_domains``, named in the header); then one row per run with its wall and CPU seconds."""

    def cell(values: list[float]) -> str:
        mean, std = mean_std(values)
        return f"{mean:.1f} ± {std:.1f}" if len(values) > 1 else f"{mean:.1f}"

    domains = [d for d in results[0].metrics if d != MEAN]
    lines = [
        "| method | seeds | " + " | ".join(domains) + f" | mean shifted ({', '.join(mean_domains)}) |",
        "|---|---|" + "---|" * (len(domains) + 1),
    ]
    for method in methods:
        runs = [r for r in results if r.method == method]
        if not runs:
            continue
        cells = [cell([r.metrics[d] for r in runs]) for d in (*domains, MEAN)]
        lines.append(f"| {method} | {len(runs)} | " + " | ".join(cells[:-1]) + f" | **{cells[-1]}** |")
    lines += [
        "",
        "| method | seed | " + " | ".join(domains) + " | mean shifted | wall (s) | CPU (s) |",
        "|---|---|" + "---|" * (len(domains) + 3),
    ]
    for r in sorted(results, key=lambda r: (methods.index(r.method), r.seed)):
        cpu = f"{r.cpu:.0f}" if r.cpu is not None else "n/a"
        lines.append(
            f"| {r.method} | {r.seed} | "
            + " | ".join(f"{r.metrics[d]:.1f}" for d in (*domains, MEAN))
            + f" | {r.wall:.0f} | {cpu} |"
        )
    return "\n".join(lines)


def comparisons(results: list[RunResult], a: str, b: str) -> list[Comparison]:
    """``a`` vs ``b`` on the shifted mean, then on each domain, over the seeds both ran."""
    scores: dict[str, dict[str, dict[int, float]]] = {}
    for r in results:
        for metric, value in r.metrics.items():
            scores.setdefault(metric, {}).setdefault(r.method, {})[r.seed] = value
    metrics = [MEAN, *(m for m in results[0].metrics if m != MEAN)]
    return [compare(a, b, "mean shifted" if m == MEAN else m, scores[m]) for m in metrics]


def statistics_report(results: list[RunResult], methods: list[str]) -> str:
    """The paired comparison of the first two methods (a table and the verdict line), or why there is none."""
    if len(methods) < 2:
        return ""
    a, b = methods[:2]
    both = {r.seed for r in results if r.method == a} & {r.seed for r in results if r.method == b}
    if len(both) < 2:
        return f"{a} vs {b}: no statistics on {len(both)} common seed(s); run at least 2 seeds of each.\n"
    found = comparisons(results, a, b)
    return (
        f"{a} vs {b}, paired by seed (a seed gives both runs the same data order and augmentations); ± is the std "
        "over seeds; p is two-sided:\n\n"
        f"{comparison_table(found)}\n\nVerdict: {verdict(found[0])}\n"
    )


def write_runs_csv(results: list[RunResult], path: Path) -> None:
    """Every run's metrics, wall and CPU seconds, one row per run."""
    metrics = list(results[0].metrics)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "seed", *metrics, "wall_s", "cpu_s"])
        for r in sorted(results, key=lambda r: (r.method, r.seed)):
            cpu = f"{r.cpu:.2f}" if r.cpu is not None else ""
            values = (f"{r.metrics[m]:.6g}" for m in metrics)  # the logged values, without float-sum noise
            writer.writerow([r.method, r.seed, *values, f"{r.wall:.1f}", cpu])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    prepare_data(args)  # once, before the parallel runs (which then find it up to date)
    if args.fork:
        preload_data(args)  # decoded once here, shared by the forked runs
    mean_domains = list(compose_run(args.methods[0], args.seeds[0], args).data.mean_domains)
    jobs = sweep_jobs(args)
    results = run_all(jobs, args)
    wall = time.time() - STARTED
    cpu = "CPU time not measured (no `resource` module)"
    if resource is not None:  # this process (imports, data check and decoding) and every run, waited for above
        usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
        cpu = f"{sum(u.ru_utime + u.ru_stime for u in usage) / 60:.1f} CPU-min"
    command = shlex.join(
        [Path(sys.executable).name, "scripts/minidg_sweep.py", *(argv if argv is not None else sys.argv[1:])]
    )
    report = (
        f"{table(results, all_methods(args), mean_domains)}\n\nCommand: `{command}` — {len(jobs)} runs, "
        f"{args.jobs} in parallel (one thread each): {wall / 60:.1f} min wall and {cpu} (user + system time of the "
        "sweep process and all its runs, imports and data decoding included; the analysis below is not).\n\n"
        f"{statistics_report(results, args.methods)}"
    )
    write_runs_csv(results, args.out / "runs.csv")
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
