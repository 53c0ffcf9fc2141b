"""scripts/benchmark.py on the tiny model: one table with a row per variant, FLOPs that are FlopCounterMode's own count,
the counts table, and the GPU table written between its markers (docs/benchmarks.md)."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tests.test_perf_switches import load_benchmark

benchmark = load_benchmark()

GRID = ["--tiny", "--device", "cpu", "--ablations", "depthforge,rein,frozen", "--batch-sizes", "2"]
GRID += ["--precisions", "fp32", "--steps", "1", "--warmup", "1", "--infer-runs", "1"]


@pytest.fixture(scope="module")
def grid():
    args = benchmark.parse_args(GRID)
    rows = benchmark.run_grid(args, log=lambda line: None)
    return args, rows, benchmark.report(args, rows, "python scripts/benchmark.py " + " ".join(GRID))


def table_rows(text: str) -> list[list[str]]:
    """The cells of the first Markdown table in ``text`` (header first, the separator line dropped)."""
    lines = text.split("\n\n")
    table = next(block for block in lines if block.startswith("| ablation"))
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in table.splitlines()]
    return [rows[0], *rows[2:]]


def test_one_row_per_variant_with_every_column(grid):
    args, rows, text = grid
    header, *body = table_rows(text)
    assert header == list(benchmark.COLUMNS)
    assert [row[:5] for row in body] == [[name, "fp32", "off", "off", "2"] for name in ("depthforge", "rein", "frozen")]
    for cells in body:
        assert len(cells) == len(header)
        values = dict(zip(header, cells))
        assert values["MFU"] == "n/a"  # a CPU has no bf16 peak
        for column in ("img/s", "step ms", "visual ms", "head+loss ms", "optim ms", "Σ/step", "peak GiB", "step GiB"):
            assert float(values[column]) > 0, column
        assert float(values["train GFLOP/img"]) > 0 and float(values["slide GFLOP"]) > 0
    depthforge, rein, _ = (dict(zip(header, cells)) for cells in body)
    assert float(depthforge["depth ms"]) > 0 and float(depthforge["DRD ms"]) > 0
    assert rein["depth ms"] == rein["DRD ms"] == "—"  # REIN has no depth VFM and no DRD
    assert "| depthforge / rein | fp32, off, ckpt off, batch 2 |" in text  # the ratio table


def test_flops_are_flop_counter_modes_own_count(grid):
    args, rows, _ = grid
    counted = {}
    for ablation in ("depthforge", "rein", "frozen"):
        _, module = benchmark.build(args, ablation)
        seg = module.segmenter.train()
        images, labels = benchmark.make_batch(2, args.crop, seg.num_classes, torch.device("cpu"), args.seed)
        counter = FlopCounterMode(display=False)
        with counter:
            seg.loss(images, labels)["loss"].backward()
        counted[ablation] = counter.get_total_flops() / 2
        seg.eval()
        image = torch.randn(1, 3, *args.infer_size)
        with FlopCounterMode(display=False) as slide_counter, benchmark.no_trainable_parameters(seg):
            benchmark.slide_inference(seg.predict, image, seg.num_classes, **module.slide)
        counted[f"{ablation} slide"] = slide_counter.get_total_flops()
    by_ablation = {row.variant.ablation: row for row in rows}
    for ablation, row in by_ablation.items():
        assert row.train_flops == counted[ablation] > 0
        assert row.slide_flops == counted[f"{ablation} slide"] > 0
    assert by_ablation["depthforge"].train_flops > by_ablation["rein"].train_flops  # the depth VFM and the DRD
    assert by_ablation["depthforge"].slide_flops > by_ablation["rein"].slide_flops


def test_parts_sum_close_to_the_step(grid):
    """The staged step does the same work: its parts add up to the uncut step within the noise of one step."""
    _, rows, _ = grid
    for row in rows:
        assert 0.5 < sum(row.split_s.values()) / row.step_s < 2.0


def test_grid_axes_and_old_flags():
    args = benchmark.parse_args(
        ["--tiny", "--compile", "--ablation", "rein", "--batch-size", "3", "--checkpointing", "off,on"]
    )
    assert args.compile == ["segmenter"] and args.ablations == ["rein"] and args.batch_sizes == [3]
    assert [v.checkpointing for v in benchmark.variants(args)] == [False, True]
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--precisions", "fp16"])


def test_count_only_lists_every_part(capsys):
    text = benchmark.main(["--count-only", "--tiny", "--ablations", "depthforge,frozen"])
    header, *body = table_rows(text.replace("| part |", "| ablation |"))
    assert header == ["ablation", "depthforge", "frozen"]
    values = {cells[0]: cells[1:] for cells in body}
    assert values["depth VFM (frozen)"][1] == "0" and int(values["depth VFM (frozen)"][0].replace(",", "")) > 0
    assert float(values["checkpoint / full model (%)"][0]) < 100
    assert text in capsys.readouterr().out


def test_table_is_written_between_its_markers(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# B\n\n<!-- gpu-table:start -->\nnot measured\n<!-- gpu-table:end -->\n\nafter\n")
    benchmark.write_between_markers(doc, "gpu-table", "| a |\n|---|\n| 1 |\n")
    assert doc.read_text() == "# B\n\n<!-- gpu-table:start -->\n| a |\n|---|\n| 1 |\n<!-- gpu-table:end -->\n\nafter\n"
    doc.write_text("no markers\n")
    with pytest.raises(ValueError, match="exactly one <!-- gpu-table:start -->"):
        benchmark.write_between_markers(doc, "gpu-table", "x")


def test_peak_table_knows_the_usual_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert benchmark.peak_tflops_of(torch.device("cuda"), None) == 989.0
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    assert benchmark.peak_tflops_of(torch.device("cuda"), None) == 312.0
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some Future GPU")
    assert benchmark.peak_tflops_of(torch.device("cuda"), None) is None
    assert benchmark.peak_tflops_of(torch.device("cuda"), 500.0) == 500.0
    assert benchmark.peak_tflops_of(torch.device("cpu"), None) is None


def test_memory_of_a_step_counts_what_it_allocates():
    """The CPU measure: a step that keeps two 4 MB tensors alive at once peaks at 8 MB above its start."""
    keep = torch.zeros(1024, 1024)  # allocated before: not counted

    def step() -> None:
        a = torch.ones(1024, 1024)
        b = a * 2
        del a, b

    assert 8 * 2**20 <= benchmark.cpu_step_peak_bytes(step) < 8 * 2**20 + 1024  # (+ a few scalars of the mode)
    assert keep.sum() == 0
    assert isinstance(benchmark.autocast_for("fp32", torch.device("cpu"))(), contextlib.nullcontext)
