"""Evaluate a checkpoint on every target domain of an experiment: a per-domain mIoU table (stdout, CSV, Markdown).

python -m src.eval experiment=citys2acdc ckpt_path=logs/train/runs/…/checkpoints/last.ckpt

The authors' REIN/DepthForge files load directly (src/models/authors.py): their training checkpoint with their
converted backbone file, or a merged full file alone, with the config of the method they hold:

python -m src.eval experiment=gta2citys ablation=rein ckpt_path=iter_40000_published.pth \
    backbone_ckpt=dinov2_converted.pth
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from src.data.labels import CLASS_NAMES
from src.metrics import mean_miou
from src.models.authors import open_checkpoint
from src.utils.checkpoint import CheckpointError
from src.utils.instantiate import build_module, build_trainer, check_config, instantiate_checked

log = logging.getLogger(__name__)


def results_table(results: dict[str, dict[str, torch.Tensor]], mean_domains: list[str]) -> list[dict[str, str]]:
    """One row per domain (mIoU, aAcc and per-class IoU in %), then the mean over ``mean_domains``."""
    rows = []
    for domain, r in results.items():
        row = {"domain": domain, "mIoU": f"{float(r['mIoU']):.2f}", "aAcc": f"{float(r['aAcc']):.2f}"}
        row.update({c: ("nan" if torch.isnan(v) else f"{float(v):.2f}") for c, v in zip(CLASS_NAMES, r["IoU"])})
        rows.append(row)
    mean = mean_miou(results, mean_domains)
    rows.append({"domain": f"mean({','.join(mean_domains)})", "mIoU": f"{float(mean):.2f}"})
    return rows


def write_tables(rows: list[dict[str, str]], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    fields = list(rows[0])
    csv_path, md_path = out_dir / "results.csv", out_dir / "results.md"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(fields) + " |", "|" + "---|" * len(fields)]
    lines += ["| " + " | ".join(r.get(k, "") for k in fields) + " |" for r in rows]
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def evaluate(cfg: DictConfig) -> list[dict[str, str]]:
    if not cfg.get("ckpt_path"):
        raise CheckpointError(
            "src.eval needs a checkpoint to evaluate\n  fix: ckpt_path=/path/to/run/checkpoints/last.ckpt"
        )
    check_config(cfg)  # a wrong-typed value fails here with its key and fix, before anything is built
    # a missing or damaged file fails here, before the model is built; the authors' files are read and renamed
    _, authors_weights = open_checkpoint(cfg.ckpt_path, cfg.get("backbone_ckpt"))
    datamodule = instantiate_checked(cfg.data, "data")
    if authors_weights is None:  # a depthforge checkpoint: Lightning restores it (config checked on load)
        model = build_module(cfg)
        trainer = build_trainer(cfg)
        trainer.test(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    else:  # the VFMs the files hold are built without fetching their weights, then everything is copied in
        model = build_module(authors_weights.architecture(cfg))
        authors_weights.load_into(model.segmenter)
        trainer = build_trainer(cfg)
        trainer.test(model, datamodule=datamodule)
    rows = results_table(model.test_results, datamodule.mean_domains)
    csv_path, md_path = write_tables(rows, Path(cfg.paths.output_dir))
    summary = "\n".join(f"{r['domain']:>32s}  {r['mIoU']:>6s}" for r in rows)
    print(f"mIoU (%) per domain\n{summary}\nwritten to {csv_path} and {md_path}")
    return rows


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
