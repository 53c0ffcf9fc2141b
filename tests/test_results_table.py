"""scripts/results_table.py: hand-made runs give exact cells; a real 2 x 2 smoke multirun becomes the paper's tables."""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from statistics import mean, stdev

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "results_table.py"
ACDC = ("snow", "night", "fog", "rain")


def _script():
    spec = importlib.util.spec_from_file_location("results_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def _hydra_record(run: Path, experiment: str, ablation: str | None, seed: int, backbone: str, extra=()) -> None:
    (run / ".hydra").mkdir(parents=True)
    overrides = [f"experiment={experiment}", f"seed={seed}", f"paths.data_dir={run}/data", *extra]
    overrides += [f"ablation={ablation}"] if ablation else []
    recipe = "authors" if ablation == "frozen" else "paper"  # what conf/ablation/frozen.yaml selects
    config = {"task_name": experiment, "seed": seed, "data": {"mean_domains": list(ACDC)}, "recipe": recipe}
    choices = {"experiment": experiment, "ablation": ablation, "model/backbone": backbone}
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}}))
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))


def _train_run(run: Path, experiment, ablation, seed, values: dict[str, float], backbone="dinov2_l", extra=()) -> Path:
    """A training run whose metrics.csv has an earlier validation, the last one, and a later train-only row."""
    _hydra_record(run, experiment, ablation, seed, backbone, extra)
    (run / "csv" / "version_0").mkdir(parents=True)
    fields = ["epoch", "step", "train/loss", *(f"val/{d}/mIoU" for d in values)]
    with (run / "csv" / "version_0" / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerow({"epoch": 0, "step": 4, **{f"val/{d}/mIoU": 1.0 for d in values}})
        writer.writerow({"epoch": 0, "step": 9, **{f"val/{d}/mIoU": v for d, v in values.items()}})
        writer.writerow({"epoch": 0, "step": 9, "train/loss": 3.0})
    return run


def test_cells_are_mean_and_sample_std_over_seeds_with_the_paper_and_the_difference(tmp_path):
    runs = tmp_path / "multirun"
    _train_run(runs / "0", "citys2acdc", "rein", 0, dict(zip(ACDC, (70.0, 55.0, 79.0, 72.0))))
    _train_run(runs / "1", "citys2acdc", "rein", 1, dict(zip(ACDC, (71.0, 56.0, 80.5, 73.0))))
    _train_run(runs / "2", "citys2acdc", None, 0, dict(zip(ACDC, (75.0, 60.0, 81.0, 75.0))))  # no ablation: DepthForge
    lr = ("model.optimizer.lr=2e-4",)  # another configuration: its own row, named by the override
    _train_run(runs / "3", "citys2acdc", "rein", 0, dict(zip(ACDC, (60.0, 50.0, 70.0, 65.0))), extra=lr)
    # src.eval of a gta2citys checkpoint: its numbers, the identity of the training run the checkpoint came from
    trained = _train_run(tmp_path / "train", "gta2citys", "frozen", 3, {"citys": 1.0, "bdd": 1.0, "map": 1.0})
    evaluation = tmp_path / "eval"
    (evaluation / ".hydra").mkdir(parents=True)
    ckpt = trained / "checkpoints" / "last.ckpt"
    (evaluation / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"task_name": "eval", "ckpt_path": str(ckpt)}))
    with (evaluation / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["domain", "mIoU", "aAcc"])
        writer.writeheader()
        rows = [("citys", "50.00"), ("bdd", "40.00"), ("map", "45.50"), ("mean(citys,bdd,map)", "45.17")]
        writer.writerows({"domain": d, "mIoU": v, "aAcc": "90.00"} for d, v in rows)

    text = _script().main([str(runs), str(evaluation), str(tmp_path / "train")])
    lines = text.splitlines()
    table1 = lines[lines.index("### Table 1: Cityscapes → ACDC (val), DINOv2-L — mIoU (%)") :]
    # Snow: 70, 71 -> 70.50 ± 0.71 (n - 1); Fog 79, 80.5 -> 79.75 ± 1.06; Avg: 69.0, 70.125 -> 69.56 ± 0.80
    assert "| REIN | 2 | 70.50 ± 0.71 | 55.50 ± 0.71 | 79.75 ± 1.06 | 72.50 ± 0.71 | 69.56 ± 0.80 |" in table1
    assert "| REIN (paper) |  | 70.6 | 55.9 | 79.5 | 72.5 | 69.63 |" in table1  # Avg 69.625 half up
    assert "| REIN (Δ) |  | -0.10 | -0.40 | +0.25 | +0.00 | -0.07 |" in table1
    assert "| DepthForge | 1 | 75.00 | 60.00 | 81.00 | 75.00 | 72.75 |" in table1  # one seed: no ±
    assert "| DepthForge (Δ) |  | -0.40 | -0.40 | -0.20 | -0.40 | -0.35 |" in table1
    assert "| REIN [model.optimizer.lr=2e-4] | 1 | 60.00 | 50.00 | 70.00 | 65.00 | 61.25 |" in table1
    # Table 5's Avg. Gain against the REIN row: mean(4.5, 4.5, 1.25, 2.5) = 3.1875; the paper's 3.475
    table5 = lines[lines.index("### Table 5: how depth enters the tokens, Cityscapes → ACDC, DINOv2-L — mIoU (%)") :]
    assert "| No Depth | 2 | 70.50 ± 0.71 | 55.50 ± 0.71 | 79.75 ± 1.06 | 72.50 ± 0.71 | +0.00 |" in table5
    assert "| Config3 (Ours) | 1 | 75.00 | 60.00 | 81.00 | 75.00 | +3.19 |" in table5
    assert "| Config3 (Ours) (paper) |  | 75.4 | 60.4 | 81.2 | 75.4 | +3.48 |" in table5
    assert "| Config3 (Ours) (Δ) |  | -0.40 | -0.40 | -0.20 | -0.40 | -0.29 |" in table5
    # Table 4 has its own row names and the BDD/Map columns the runs did not log
    assert "| REIN | 2 | 70.50 ± 0.71 | 55.50 ± 0.71 | 79.75 ± 1.06 | 72.50 ± 0.71 | — | — |" in lines
    # the evaluation replaced its training run (counted once), in Tables 3 and 6-7 with the paper's parameter count
    assert "| Freeze | 1 | 50.00 | 40.00 | 45.50 | 45.17 |" in lines
    assert "| Freeze | 0.00M | 1 | 50.00 | 40.00 | 45.50 | 45.17 |" in lines
    assert "| Freeze (paper) |  |  | 63.3 | 56.1 | 63.9 | 61.10 |" in lines  # Table 6's DINOv2-L row
    assert "| Freeze (Δ) |  |  | -13.30 | -16.10 | -18.40 | -15.93 |" in lines
    table3 = lines[lines.index("### Table 3: GTA5 → Cityscapes, BDD100K, Mapillary, DINOv2-L — mIoU (%)") :]
    freeze = table3.index("| Freeze | 1 | 50.00 | 40.00 | 45.50 | 45.17 |")
    assert "| Freeze (paper) |" not in table3[freeze + 1]  # Table 3 has no Freeze row in the paper

    latex = _script().main([str(runs), "--tables", "1", "--format", "latex"])
    assert r"REIN & 2 & 70.50 $\pm$ 0.71 & 55.50 $\pm$ 0.71" in latex
    assert r"REIN ($\Delta$) &  & $-$0.10 & $-$0.40 & $+$0.25 & $+$0.00 & $-$0.07 \\" in latex
    assert latex.count(r"\begin{tabular}") == 1 and r"\caption{Table 1: Cityscapes $\to$ ACDC" in latex


def test_a_real_smoke_multirun_becomes_the_papers_tables(tmp_path):
    """2 ablations x 2 seeds of the CPU smoke experiment (tiny random VFMs, ACDC-layout targets), read as Table 1's
    setting: REIN and DepthForge rows over both seeds, the paper's numbers beside them."""
    sweep = tmp_path / "sweep"
    command = [
        sys.executable,
        "-m",
        "src.train",
        "-m",
        "experiment=smoke",
        "ablation=rein,depthforge",
        "seed=0,1",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "callbacks.model_checkpoint.every_n_train_steps=2",
        "test=false",
        "data.prepare.num_images=4",
        f"paths.data_dir={tmp_path / 'data'}",
        f"hydra.sweep.dir={sweep}",
        "hydra.sweep.subdir=${hydra.job.num}",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1", "2", "3"]

    table = subprocess.run(
        [sys.executable, str(SCRIPT), str(sweep), "--experiment", "citys2acdc", "--backbone", "dinov2_l"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    start = lines.index("### Table 1: Cityscapes → ACDC (val), DINOv2-L — mIoU (%)") + 2
    table1 = lines[start : lines.index("", start)]
    rows = {line.split(" | ")[0].lstrip("| "): line.strip("|").split(" | ") for line in table1 if line.startswith("|")}
    for method, paper_snow in (("REIN", "70.6"), ("DepthForge", "75.4")):
        assert rows[method][1].strip() == "2" and all(" ± " in c for c in rows[method][2:7]), rows[method]
        assert rows[f"{method} (paper)"][2].strip() == paper_snow
        assert rows[f"{method} (Δ)"][2].strip().startswith(("-", "+"))
    # the REIN snow cell is the mean ± std of the two runs' last val/snow/mIoU
    snow = []
    for job in sorted(sweep.iterdir()):
        if job.is_dir() and "ablation=rein" in (job / ".hydra" / "overrides.yaml").read_text():
            logged = list(csv.DictReader(next(job.rglob("metrics.csv")).open()))
            snow.append(float([r for r in logged if r.get("val/snow/mIoU")][-1]["val/snow/mIoU"]))
    assert rows["REIN"][2].strip() == f"{mean(snow):.2f} ± {stdev(snow):.2f}"
    assert any(line.startswith("### Table 5:") for line in lines) and any("| Config3 (Ours) | 2 |" in x for x in lines)


@pytest.mark.parametrize("args", [["/no/such/folder"], []])
def test_missing_input_is_an_error(args, tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), *(args or [str(tmp_path)])], capture_output=True, text=True)
    assert done.returncode == 2 and ("no such folder" in done.stderr or "no run with mIoU" in done.stderr)


@pytest.mark.parametrize("experiment", ["gta2citys", "citys2acdc", "citys2bdd_map_gta"])
def test_rows_name_the_recipe_the_ablations_select(experiment, tmp_path):
    """The table names a row's recipe when it is not the one its ablation selects; those selections are the
    configs': the baselines run the authors' PolyLR recipe (40k steps, batch 4), the rest DepthForge's."""
    from tests.conftest import CONF_DIR, compose_config

    authors = _script().AUTHORS_RECIPE
    ablations = sorted(p.stem for p in (CONF_DIR / "ablation").glob("*.yaml"))
    for ablation in ablations if experiment == "gta2citys" else ["frozen", "rein"]:
        cfg = compose_config([f"experiment={experiment}", f"ablation={ablation}"], tmp_path)
        expected = "authors" if ablation in authors else "paper"
        assert cfg.recipe == expected, ablation
        scheduler, steps, batch = cfg.model.scheduler, cfg.trainer.max_steps, cfg.data.batch_size
        if expected == "authors":
            assert scheduler == {
                "_target_": "src.models.schedules.poly",
                "_partial_": True,
                "power": 0.9,
                "eta_min": 0.0,
            }
            assert (steps, batch) == (40000, 4), ablation
        else:
            assert scheduler._target_ == "src.models.schedules.one_cycle" and batch == 5, ablation
            assert steps == (50000 if experiment == "gta2citys" else 40000), ablation
    default = compose_config([f"experiment={experiment}"], tmp_path)
    assert default.model.scheduler == compose_config([], tmp_path).model.scheduler  # = conf/model/default.yaml's
