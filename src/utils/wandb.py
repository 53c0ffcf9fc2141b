"""Weights & Biases done per job: :class:`DGWandbLogger` (``logger=wandb``) and :func:`finish_wandb`.

Every job of a Hydra multirun gets its own W&B run, named and grouped from the experiment, ablation, backbone and
seed, and finished at the end of the job (``src.train.main`` calls :func:`finish_wandb`, also when the job fails).
A run resumed with ``ckpt_path`` in the same run directory continues the same W&B run (the id is kept in
``<run>/wandb_run_id``). Without an API key the run is offline (``WANDB_MODE=offline``, sync later with
``wandb sync <run>/wandb/offline-run-*``), and ``wandb.init`` gives up after ``init_timeout`` seconds instead of
hanging on a missing network.
"""

from __future__ import annotations

import logging
import math
import netrc
import os
import random
import re
import string
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from src.data.labels import CLASS_NAMES

log = logging.getLogger(__name__)

RUN_ID_FILE = "wandb_run_id"
# the parts of a Segmenter whose trainable/frozen parameter counts go to the run's config and summary
PARTS = ("visual_backbone", "depth_backbone", "token_adapter", "refinement_decoder", "mask_head")
_CLASS_IOU = re.compile(r"^(val|test)/(?P<domain>[^/]+)/IoU/(?P<cls>.+)$")


def has_api_key() -> bool:
    """Whether W&B could log in without asking: ``WANDB_API_KEY`` or an ``api.wandb.ai`` entry in ``~/.netrc``."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        host = os.environ.get("WANDB_BASE_URL", "api.wandb.ai").split("//")[-1]
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _hydra_job() -> tuple[dict[str, str], str | None]:
    """The Hydra config-group choices of this job and, in a multirun, its sweep directory."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            return {}, None
        hc = HydraConfig.get()
        choices = {k: str(v) for k, v in hc.runtime.choices.items() if v is not None}
        return choices, (str(hc.sweep.dir) if hc.mode == RunMode.MULTIRUN else None)
    except Exception:  # noqa: BLE001 - naming is best effort; a run is never refused for it
        return {}, None


def run_identity(
    task_name: str, seed: int | None, tags: list[str] | tuple[str, ...] = ()
) -> tuple[str, str, list[str]]:
    """(name, group, tags) of this job's W&B run, e.g. ``citys2acdc-rein-dinov2_l-s4307``, group
    ``citys2acdc/2025-01-01_12-00-00`` (the multirun's directory name), tags ``[..., experiment:citys2acdc, ...]``."""
    choices, sweep_dir = _hydra_job()
    experiment = choices.get("experiment") or task_name
    ablation = choices.get("ablation")
    backbone = choices.get("model/backbone")
    parts = [experiment, ablation, backbone, f"s{seed}" if seed is not None else None]
    name = "-".join(p for p in parts if p)
    group = f"{experiment}/{Path(sweep_dir).name}" if sweep_dir else experiment
    extra = [f"experiment:{experiment}", f"ablation:{ablation or 'none'}"]
    extra += [f"backbone:{backbone}"] if backbone else []
    all_tags = list(dict.fromkeys([*map(str, tags or ()), *extra]))
    return name, group, [t[:64] for t in all_tags]


def run_id(save_dir: str | Path, resume_from: str | None) -> str:
    """The W&B run id of the run in ``save_dir``: the one saved there when this run resumes (``ckpt_path`` set),
    else a fresh one (saved for a later resume)."""
    path = Path(save_dir) / RUN_ID_FILE
    if resume_from and path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    new = "".join(random.SystemRandom().choices(string.ascii_lowercase + string.digits, k=8))
    if rank_zero_only.rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(new + "\n")
    return new


def parameter_counts(module: Any) -> dict[str, dict[str, int]]:
    """{part: {trainable, frozen}} for the segmenter's parts (absent parts count 0) and ``total``."""
    segmenter = getattr(module, "segmenter", module)
    counts: dict[str, dict[str, int]] = {}
    for part in PARTS:
        sub = getattr(segmenter, part, None)
        params = list(sub.parameters()) if sub is not None else []
        trainable = sum(p.numel() for p in params if p.requires_grad)
        counts[part] = {"trainable": trainable, "frozen": sum(p.numel() for p in params) - trainable}
    params = list(segmenter.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    counts["total"] = {"trainable": trainable, "frozen": sum(p.numel() for p in params) - trainable}
    return counts


class DGWandbLogger(WandbLogger):
    """Lightning's :class:`WandbLogger` with one run per job (named, grouped, tagged, resumable; see the module
    docstring), the parameter counts per part in the config and summary (``params/<part>/{trainable,frozen}``), and a
    per-class IoU table per domain (``val/<domain>/IoU_table``) next to the per-class IoU scalars."""

    def __init__(
        self,
        save_dir: str = ".",
        project: str = "depthforge",
        name: str | None = None,
        group: str | None = None,
        tags: list[str] | tuple[str, ...] = (),
        task_name: str = "train",
        seed: int | None = None,
        resume_from: str | None = None,
        offline: bool | None = None,
        init_timeout: float = 30.0,
        **kwargs: Any,
    ) -> None:
        import wandb

        if offline is None:  # no key and no mode chosen: offline, never a login prompt or a hang
            offline = os.environ.get("WANDB_MODE") in ("offline", "dryrun") or not has_api_key()
            if offline:
                os.environ.setdefault("WANDB_MODE", "offline")
        auto_name, auto_group, auto_tags = run_identity(task_name, seed, tags)
        kwargs.setdefault("id", run_id(save_dir, resume_from))
        kwargs.setdefault("resume", "allow")
        kwargs.setdefault("settings", wandb.Settings(init_timeout=init_timeout))
        kwargs.setdefault("log_model", False)
        super().__init__(
            save_dir=save_dir,
            project=project,
            name=name or auto_name,
            group=group or auto_group,
            tags=auto_tags,
            offline=offline,
            **kwargs,
        )

    @rank_zero_only
    def log_graph(self, model: Any, input_array: Any = None) -> None:
        """Called by Lightning at the start of fit/test: record the parameter counts (no graph is logged)."""
        if not hasattr(model, "segmenter"):
            return
        counts = parameter_counts(model)
        self.experiment.config.update({"params": counts}, allow_val_change=True)
        self.experiment.summary.update(
            {f"params/{part}/{kind}": n for part, c in counts.items() for kind, n in c.items()}
        )

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        super().log_metrics(metrics, step)
        per_domain: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
        for key, value in metrics.items():
            match = _CLASS_IOU.match(key)
            if match:
                per_domain[(match[1], match["domain"])][match["cls"]] = float(value)
        for (stage, domain), ious in per_domain.items():
            rows = [[c, ious.get(c)] for c in CLASS_NAMES]  # None: the class has no pixels in this domain
            rows = [[c, None if v is None or math.isnan(v) else v] for c, v in rows]
            self.log_table(key=f"{stage}/{domain}/IoU_table", columns=["class", "IoU"], data=rows, step=step)


def finish_wandb(exit_code: int = 0) -> None:
    """Finish the W&B run of this process, if one is open (the end of a job; ``exit_code`` 1 marks it failed)."""
    wandb = sys.modules.get("wandb")
    if wandb is None or getattr(wandb, "run", None) is None:
        return
    try:
        wandb.finish(exit_code=exit_code)
    except Exception as err:  # noqa: BLE001 - a failed upload must not hide the job's own result or error
        log.warning("could not finish the W&B run: %s", err)
