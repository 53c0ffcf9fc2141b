"""The per-domain, per-class results table: one home for src.eval, the end-of-run report of src.train
(:class:`src.callbacks.RunReport`) and anything else that prints or writes scores.

``results`` everywhere is what :class:`~src.metrics.SegmentationIoU` computes per domain,
``{domain: {"mIoU": %, "aAcc": %, "IoU": (K,) %}}`` (``SegmentationModule.test_results`` / ``.last_results``).

- :func:`results_table`: rows of strings, one per domain (mIoU, aAcc, one IoU column per class) and the mean row;
- :func:`write_tables`: those rows as ``<stem>.csv`` and ``<stem>.md``, written atomically;
- :func:`format_table`: the same numbers as plain text for a console or a cluster log (classes down, domains
  across, fixed width, no colour or box characters);
- :func:`report`: all three at once.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from src.data.labels import CLASS_NAMES
from src.metrics import mean_miou
from src.utils.checkpoint import atomic_write

#: the leading columns of every row; the class columns follow in train-ID order (src/data/labels.py)
FIXED_COLUMNS = ("domain", "mIoU", "aAcc")


def _cell(value: torch.Tensor | float) -> str:
    value = float(value)
    return "nan" if value != value else f"{value:.2f}"


def results_table(results: dict[str, dict[str, torch.Tensor]], mean_domains: list[str]) -> list[dict[str, str]]:
    """One row per domain (mIoU, aAcc and per-class IoU in %), then the mean over ``mean_domains``."""
    rows = []
    for domain, r in results.items():
        row = {"domain": domain, "mIoU": _cell(r["mIoU"]), "aAcc": _cell(r["aAcc"])}
        row.update({c: _cell(v) for c, v in zip(CLASS_NAMES, r["IoU"])})
        rows.append(row)
    mean = mean_miou(results, mean_domains)
    rows.append({"domain": f"mean({','.join(mean_domains)})", "mIoU": f"{float(mean):.2f}"})
    return rows


def _markdown(rows: list[dict[str, str]], title: str | None = None) -> str:
    fields = list(rows[0])
    lines = [f"{title}", ""] if title else []
    lines += ["| " + " | ".join(fields) + " |", "|" + "---|" * len(fields)]
    lines += ["| " + " | ".join(r.get(k, "") for k in fields) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_tables(
    rows: list[dict[str, str]], out_dir: Path, stem: str = "results", title: str | None = None
) -> tuple[Path, Path]:
    """``<out_dir>/<stem>.csv`` (every column) and ``<stem>.md`` (the same table, ``title`` above it), each written
    atomically (an interrupted run leaves the previous file or none, never half a table)."""
    out_dir = Path(out_dir)
    fields = list(rows[0])
    csv_path, md_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.md"
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    with atomic_write(csv_path) as f:
        f.write(text.getvalue().encode())
    with atomic_write(md_path) as f:
        f.write(_markdown(rows, title).encode())
    return csv_path, md_path


def format_table(rows: list[dict[str, str]], title: str | None = None) -> str:
    """The rows of :func:`results_table` as plain text: one line per metric and class, one column per domain and
    a last column with the mean mIoU (named below the table). Readable in a terminal and in a plain log file."""
    domains = [r for r in rows if not r["domain"].startswith("mean(")]
    means = [r for r in rows if r["domain"].startswith("mean(")]
    names = [r["domain"] for r in domains] + ["mean" for _ in means]
    metrics = [k for k in rows[0] if k != "domain"]
    first = max(len(m) for m in metrics)
    widths = [max(6, len(n)) for n in names]
    lines = [title] if title else []
    lines.append(" ".join([f"{'':<{first}}", *(f"{n:>{w}}" for n, w in zip(names, widths))]))
    for metric in metrics:
        cells = [r.get(metric, "") for r in [*domains, *means]]
        lines.append(" ".join([f"{metric:<{first}}", *(f"{c:>{w}}" for c, w in zip(cells, widths))]).rstrip())
    lines += [f"mean: the mIoU {r['domain']}" for r in means]
    return "\n".join(lines)


def report(
    results: dict[str, dict[str, torch.Tensor]],
    mean_domains: list[str],
    out_dir: Path,
    stem: str = "results",
    title: str | None = None,
    echo: bool = True,
) -> tuple[list[dict[str, str]], Path, Path]:
    """Write ``<stem>.csv``/``<stem>.md`` into ``out_dir`` and (``echo``) print the plain-text table with where it
    was written; returns the rows and the two paths."""
    rows = results_table(results, mean_domains)
    csv_path, md_path = write_tables(rows, out_dir, stem, title)
    if echo:
        print(f"{format_table(rows, title)}\nwritten to {csv_path} and {md_path}", flush=True)
    return rows, csv_path, md_path
