"""Train (and then test) a segmenter: ``python -m src.train experiment=gta2citys``.

A run exits 0 only when it trained to ``trainer.max_steps`` and ran every validation its schedule asked for
(:func:`src.callbacks.check_run`); a stop on SIGTERM/SIGUSR1 saves the current step and exits with 128 + the signal
number; a requeued SLURM job resumes by itself (docs/reliability.md).
"""

from __future__ import annotations

import json
import logging
import signal
import warnings
from pathlib import Path

import hydra
import lightning as L
import torch
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from src.callbacks import Preempted, RunAudit, check_run
from src.callbacks.preemption import resume_record_path, slurm_job_key
from src.utils.checkpoint import CheckpointError
from src.utils.instantiate import (
    ConfigTypeError,
    build_module,
    build_trainer,
    check_config,
    import_requested,
    instantiate_checked,
)
from src.utils.wandb import finish_wandb

log = logging.getLogger(__name__)

# Lightning warnings that do not apply here: the frozen VFMs are in eval mode on purpose, and DGDataModule
# resumes the training data mid-epoch itself (see src/data/sampler.py).
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")
warnings.filterwarnings("ignore", message=r".*your dataloader is not resumable.*")


def _requeue_record(cfg: DictConfig) -> Path | None:
    """The resume record a preempted run of this SLURM job left (``callbacks.preemption.resume_dir``), if any."""
    job = slurm_job_key()
    node = (cfg.get("callbacks") or {}).get("preemption")
    resume_dir = node.get("resume_dir") if node is not None else None
    if not job or not resume_dir:
        return None
    return resume_record_path(resume_dir, job)


def resume_requeued_job(cfg: DictConfig) -> Path | None:
    """Under a requeued SLURM job without an explicit ``ckpt_path``: resume from the checkpoint the preempted run of
    the same job saved, in its run directory. Returns the record used, or None."""
    if cfg.get("ckpt_path") or not cfg.get("train", True):
        return None
    record = _requeue_record(cfg)
    if record is None or not record.is_file():
        return None
    saved = json.loads(record.read_text())
    ckpt = Path(saved["ckpt_path"])
    if not ckpt.is_file():
        raise CheckpointError(
            f"this SLURM job was requeued after saving {ckpt} (resume record {record}), but that checkpoint is "
            f"missing.\n  fix: put the checkpoint back, or delete {record} to train from the start"
        )
    with open_dict(cfg):
        cfg.ckpt_path = str(ckpt)
        cfg.paths.output_dir = saved["output_dir"]
    log.warning(
        "requeued SLURM job: resuming from %s (step %s, saved on %s) in %s",
        ckpt,
        saved.get("step"),
        saved.get("signal"),
        saved["output_dir"],
    )
    return record


def _stopped_by_lightning(err: SIGTERMException, what: str, trainer: L.Trainer) -> Preempted:
    """Lightning's own SIGTERM handling (active outside the training steps) exits with status 0 and saves nothing:
    turn it into a non-zero exit that says so."""
    ckpt = getattr(trainer.checkpoint_callback, "last_model_path", "") or "no checkpoint yet"
    return Preempted(
        f"stopped by SIGTERM {what}, before the run reached a point where it could save; the newest checkpoint is "
        f"{ckpt}. Resume from it (ckpt_path=…) or run again.",
        signal.SIGTERM,
    )


#: the values torch.set_float32_matmul_precision takes
MATMUL_PRECISIONS = ("highest", "high", "medium")


def check_matmul_precision(precision: str | None) -> None:
    """Refuse a ``matmul_precision`` that torch.set_float32_matmul_precision does not take, with the fix."""
    if precision is not None and precision not in MATMUL_PRECISIONS:
        raise ConfigTypeError(
            f"matmul_precision must be one of {', '.join(MATMUL_PRECISIONS)} or null, got {precision!r}\n"
            "  fix: matmul_precision=high (TF32 on Ampere+ GPUs), =highest (full fp32) or =null (torch's default)"
        )


def apply_matmul_precision(precision: str | None, trainer: L.Trainer) -> bool:
    """``torch.set_float32_matmul_precision(precision)`` for a run on CUDA (``high``: TF32 matmuls on Ampere and
    newer GPUs); a CPU run and ``precision=None`` keep torch's default. Returns whether it was applied."""
    check_matmul_precision(precision)
    if precision is None or not isinstance(trainer.accelerator, CUDAAccelerator):
        return False
    torch.set_float32_matmul_precision(precision)
    log.info("float32 matmul precision: %s", precision)
    return True


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit on the source domain, validate per target domain, then test the final weights on every target."""
    import_requested(cfg)
    check_config(cfg)  # a wrong-typed value fails here with its key and fix, before anything is built
    check_matmul_precision(cfg.get("matmul_precision"))
    record = resume_requeued_job(cfg)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate_checked(cfg.data, "data")
    model = build_module(cfg)
    trainer = build_trainer(cfg)
    apply_matmul_precision(cfg.get("matmul_precision"), trainer)
    audit = next((cb for cb in trainer.callbacks if isinstance(cb, RunAudit)), None)
    if audit is None:  # the end-of-run check needs it: a config without it still gets it
        audit = RunAudit()
        trainer.callbacks.append(audit)
    for lg in trainer.loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    n_train = sum(p.numel() for p in model.segmenter.parameters() if p.requires_grad)
    log.info("trainable parameters: %s", f"{n_train:,}")
    if cfg.get("train", True):
        try:
            trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        except SIGTERMException as err:
            raise _stopped_by_lightning(err, "outside a training step", trainer) from err
        for note in check_run(trainer, audit):
            log.info(note)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    for key, value in audit.val_metrics.items():  # a resumed run whose last validation ran before the resume
        metrics.setdefault(key, value)
    if cfg.get("test", False):
        try:
            trainer.test(model, datamodule=datamodule)
        except SIGTERMException as err:
            raise _stopped_by_lightning(err, "during the test", trainer) from err
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    if trainer.is_global_zero:
        done = record or _requeue_record(cfg)
        if done is not None:
            done.unlink(missing_ok=True)  # the job is complete: a later requeue must not resume it again
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics = train(cfg)
    except BaseException:
        finish_wandb(exit_code=1)  # each job of a multirun has its own W&B run: close it, failed
        raise
    finish_wandb()
    name = cfg.get("optimized_metric")
    return metrics.get(name) if name else None


if __name__ == "__main__":
    main()
