"""The story a run tells: the end-of-run table of src.train, and src.eval's seeded, repeatable numbers.

One short smoke training (tiny random-init VFMs, generated Cityscapes -> ACDC data) is shared by the tests.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from src.data.labels import CLASS_NAMES
from src.eval import evaluate, seed_for_build
from src.reporting import format_table, results_table, write_tables
from src.train import train
from tests.conftest import compose_config

DOMAINS = ("snow", "night", "fog", "rain")
MEAN = "mean(snow,night,fog,rain)"
# the training's data, also for every evaluation: data.prepare writes this many images per split
DATA = ["experiment=smoke", "data.prepare.num_images=4"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> tuple[Path, Path, str]:
    """(run dir, data dir, what the run printed): 2 steps, validated at the last one, then tested."""
    out = tmp_path_factory.mktemp("report")
    overrides = [
        *DATA,
        f"paths.data_dir={out / 'data'}",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "callbacks.model_checkpoint.every_n_train_steps=2",
        "test=true",
    ]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        train(compose_config(overrides, out / "run"))
    return out / "run", out / "data", printed.getvalue()


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_the_end_of_a_run_writes_and_prints_the_per_domain_per_class_table(smoke_run):
    run, _, printed = smoke_run
    md = (run / "val_results.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| domain"))
    assert header == "| " + " | ".join(["domain", "mIoU", "aAcc", *CLASS_NAMES]) + " |"  # every class column
    for domain in (*DOMAINS, MEAN):  # every domain row and the mean
        assert f"| {domain} |" in md
    assert md.startswith("validation at step 2 ")
    rows = _rows(run / "val_results.csv")
    assert [r["domain"] for r in rows] == [*DOMAINS, MEAN] and list(rows[0]) == ["domain", "mIoU", "aAcc", *CLASS_NAMES]
    # the numbers are the last validation's, as logged
    logged = [r for r in csv.DictReader(next((run / "csv").rglob("metrics.csv")).open()) if r.get("val/snow/mIoU")]
    assert all(
        float(rows[i]["mIoU"]) == pytest.approx(float(logged[-1][f"val/{d}/mIoU"])) for i, d in enumerate(DOMAINS)
    )
    # printed as plain text: classes down, domains across, the mean named, where it was written
    start = printed.index("validation at step 2 ")  # the report (the progress lines say "…step 2:")
    table = printed[start : printed.index("\n", printed.index("written to", start))]
    lines = table.splitlines()
    assert lines[1].split() == [*DOMAINS, "mean"]
    assert [line.split()[0] for line in lines[2:5]] == ["mIoU", "aAcc", "road"]
    assert any(line.startswith("traffic light ") for line in lines) and f"mean: the mIoU {MEAN}" in table
    assert f"written to {run / 'val_results.csv'} and {run / 'val_results.md'}" in table
    assert "\x1b[" not in table and "│" not in table  # no colour codes or box drawing: readable in a cluster log
    # test=true: the test of the final weights gets its own files; same weights and data as the last validation
    assert _rows(run / "test_results.csv") == rows and "test of the weights at step 2" in printed
    assert not (run / "results.csv").exists()  # results.csv stays the mark of an src.eval output


def test_two_evaluations_of_one_checkpoint_give_identical_numbers(smoke_run, tmp_path):
    """The frozen VFMs of the smoke model are random-init and not in the checkpoint: eval seeds before building
    them, so two evaluations agree to the byte, and with the training run's own last validation (same seed)."""
    run, data, _ = smoke_run
    base = [*DATA, f"paths.data_dir={data}", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"]
    first = evaluate(compose_config(base, tmp_path / "a", config_name="eval"))
    second = evaluate(compose_config(base, tmp_path / "b", config_name="eval"))
    assert first == second
    assert (tmp_path / "a" / "results.csv").read_bytes() == (tmp_path / "b" / "results.csv").read_bytes()
    assert _rows(tmp_path / "a" / "results.csv") == _rows(run / "val_results.csv")
    md = (tmp_path / "a" / "results.md").read_text()
    assert all(f"| {d} |" in md for d in DOMAINS) and "| traffic light |" in md


def test_eval_warns_when_the_checkpoints_run_used_another_seed(tmp_path, caplog):
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    (tmp_path / "run" / ".hydra" / "config.yaml").write_text("seed: 3\n")
    with caplog.at_level(logging.WARNING, logger="src.eval"):
        seed_for_build(OmegaConf.create({"seed": 0, "ckpt_path": str(ckpt)}))
        a = torch.rand(3)
        seed_for_build(OmegaConf.create({"seed": 3, "ckpt_path": str(ckpt)}))
    assert "used seed=3" in caplog.text and "fix: seed=3" in caplog.text and caplog.text.count("used seed") == 1
    seed_for_build(OmegaConf.create({"seed": 0, "ckpt_path": str(ckpt)}))
    assert torch.equal(torch.rand(3), a)  # seeding is what makes the random-init VFMs repeatable


def test_the_table_code_has_one_home(tmp_path):
    nan = float("nan")
    iou = torch.tensor([50.0, nan, *([10.0] * 17)])
    results = {
        "a": {"mIoU": torch.tensor(12.5), "aAcc": torch.tensor(80.0), "IoU": iou},
        "b": {"mIoU": torch.tensor(nan), "aAcc": torch.tensor(0.0), "IoU": torch.full((19,), nan)},
    }
    rows = results_table(results, ["a", "b"])
    assert rows[0]["road"] == "50.00" and rows[0]["sidewalk"] == "nan" and rows[1]["mIoU"] == "nan"
    assert rows[-1] == {"domain": "mean(a,b)", "mIoU": "12.50"}  # NaN domains are skipped by the mean
    csv_path, md_path = write_tables(rows, tmp_path, "x", title="t")
    assert _rows(csv_path)[0]["road"] == "50.00" and md_path.read_text().startswith("t\n\n| domain |")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.csv", "x.md"]  # no temporary file left
    text = format_table(rows)
    assert text.splitlines()[0].split() == ["a", "b", "mean"] and "mean: the mIoU mean(a,b)" in text
    from src import eval as eval_module

    assert eval_module.results_table is results_table and eval_module.write_tables is write_tables
