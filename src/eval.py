"""Evaluate a checkpoint on every target domain of an experiment: a per-domain and per-class table (stdout, CSV,
Markdown).

python -m src.eval experiment=citys2acdc ckpt_path=logs/train/runs/…/checkpoints/last.ckpt

The authors' REIN/DepthForge files load directly (src/models/authors.py): their training checkpoint with their
converted backbone file, or a merged full file alone, with the config of the method they hold:

python -m src.eval experiment=gta2citys ablation=rein ckpt_path=iter_40000_published.pth \
    backbone_ckpt=dinov2_converted.pth

Two evaluations of one checkpoint give the same numbers: the model is built after seeding with ``seed`` (the
frozen VFMs are not in our checkpoints; built from random init, as in the smoke experiment, they are the training
run's only with its seed) and nothing after that draws a random number (docs/evaluation.md, "Run reports and
determinism").
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from src.models.authors import open_checkpoint
from src.reporting import report, results_table, write_tables
from src.utils.checkpoint import CheckpointError
from src.utils.instantiate import build_module, build_trainer, check_config, instantiate_checked

log = logging.getLogger(__name__)


__all__ = ["evaluate", "results_table", "seed_for_build", "write_tables"]  # the tables live in src.reporting


def _training_seed(ckpt_path: str | Path) -> int | None:
    """The ``seed`` of the training run a checkpoint was written by (``<run>/checkpoints/<file>`` beside
    ``<run>/.hydra/config.yaml``), or None when that record is not there."""
    config = Path(ckpt_path).expanduser().resolve().parent.parent / ".hydra" / "config.yaml"
    if not config.is_file():
        return None
    try:
        seed = OmegaConf.load(config).get("seed")
    except Exception:  # an unreadable record only costs the warning
        return None
    return int(seed) if isinstance(seed, int) else None


def seed_for_build(cfg: DictConfig) -> None:
    """Seed every RNG with ``cfg.seed`` right before the model is built, as src.train does: a frozen VFM built from
    random init (the smoke experiment, the tests) is then the same in every evaluation, and the training run's own
    when the seeds agree (a warning says when the checkpoint's run used another seed)."""
    if cfg.get("seed") is None:
        return
    seed = int(cfg.seed)
    trained = _training_seed(cfg.ckpt_path) if cfg.get("ckpt_path") else None
    if trained is not None and trained != seed:
        log.warning(
            "seed=%d, but the run that wrote %s used seed=%d: frozen VFMs built from random init (no pretrained "
            "weights) differ from the ones it was trained with; fix: seed=%d",
            seed,
            cfg.ckpt_path,
            trained,
            trained,
        )
    L.seed_everything(seed, verbose=False)


def evaluate(cfg: DictConfig) -> list[dict[str, str]]:
    """Test ``cfg.ckpt_path`` on every target of ``cfg.data``; print the per-domain, per-class table and write it to
    ``<output_dir>/results.csv`` and ``results.md``. Returns the table's rows (:func:`src.reporting.results_table`)."""
    if not cfg.get("ckpt_path"):
        raise CheckpointError(
            "src.eval needs a checkpoint to evaluate\n  fix: ckpt_path=/path/to/run/checkpoints/last.ckpt"
        )
    check_config(cfg)  # a wrong-typed value fails here with its key and fix, before anything is built
    # a missing or damaged file fails here, before the model is built; the authors' files are read and renamed
    _, authors_weights = open_checkpoint(cfg.ckpt_path, cfg.get("backbone_ckpt"))
    datamodule = instantiate_checked(cfg.data, "data")
    seed_for_build(cfg)
    if authors_weights is None:  # a depthforge checkpoint: Lightning restores it (config checked on load)
        model = build_module(cfg)
        trainer = build_trainer(cfg)
        trainer.test(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    else:  # the VFMs the files hold are built without fetching their weights, then everything is copied in
        model = build_module(authors_weights.architecture(cfg))
        authors_weights.load_into(model.segmenter)
        trainer = build_trainer(cfg)
        trainer.test(model, datamodule=datamodule)
    title = f"IoU per class and domain (%) of {cfg.ckpt_path}"
    rows, _, _ = report(model.test_results, datamodule.mean_domains, Path(cfg.paths.output_dir), title=title)
    return rows


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
