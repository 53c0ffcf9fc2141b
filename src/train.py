"""Train (and then test) a segmenter: ``python -m src.train experiment=gta2citys``."""

from __future__ import annotations

import logging
import warnings

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from src.utils.instantiate import build_module, build_trainer

log = logging.getLogger(__name__)

# Lightning warnings that do not apply here: the frozen VFMs are in eval mode on purpose, and DGDataModule
# resumes the training data mid-epoch itself (see src/data/sampler.py).
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
warnings.filterwarnings("ignore", message=r".*your dataloader is not resumable.*")


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit on the source domain, validate per target domain, then test the final weights on every target."""
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(cfg.data)
    model = build_module(cfg)
    trainer = build_trainer(cfg)
    for lg in trainer.loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    n_train = sum(p.numel() for p in model.segmenter.parameters() if p.requires_grad)
    log.info("trainable parameters: %s", f"{n_train:,}")
    if cfg.get("train", True):
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if cfg.get("test", False):
        trainer.test(model, datamodule=datamodule)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    name = cfg.get("optimized_metric")
    return metrics.get(name) if name else None


if __name__ == "__main__":
    main()
