"""SegmentationModule: the training recipe (docs/method.md §7), per-domain evaluation (§8) and trainable-only
checkpoints. The model itself — its forward, loss and parameter groups — is the :class:`Segmenter`'s."""

from __future__ import annotations

import inspect
import random
import warnings
from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from torch import nn

from src.attention import has_attention, layer_strip
from src.callbacks._dist import gather_objects
from src.data.labels import CLASS_NAMES
from src.metrics import SegmentationIoU, mean_miou
from src.models.inference import slide_inference
from src.models.segmenter import Performance, Segmenter, apply_multipliers
from src.utils.checkpoint import CheckpointError, config_differences
from src.utils.visualize import denormalize, depth_to_rgb


class SegmentationModule(L.LightningModule):
    """Owns a :class:`Segmenter`, its optimiser/scheduler, per-domain metrics and the checkpoint contents.

    ``optimizer`` and ``scheduler`` are factories (Hydra ``_partial_: true``): the optimiser receives the segmenter's
    parameter groups (method §7.1) and scales its own ``lr``/``weight_decay`` by each group's multipliers; the
    scheduler (:mod:`src.models.schedules`) receives the optimiser and the trainer's ``total_steps``, and is stepped
    every iteration (method D5). Validation and test run :func:`slide_inference` with ``slide`` =
    ``{crop, stride, max_batch}`` (the model config is its one home). ``model_config`` (the resolved model config)
    is stored in every checkpoint and compared on load, so a checkpoint made for another configuration is refused with
    the differences named. ``performance`` (:class:`Performance`: compile, activation checkpointing, the depth VFM
    in inference mode, a fused optimiser) is applied to the segmenter here; it is not part of ``model_config``, so a
    checkpoint loads whatever switches the run that wrote it had.
    """

    def __init__(
        self,
        segmenter: Segmenter,
        optimizer: Callable[..., torch.optim.Optimizer],
        slide: dict[str, int | None],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        model_config: dict[str, Any] | None = None,
        log_images: int = 4,
        performance: Performance | None = None,
    ) -> None:
        super().__init__()
        self.segmenter = segmenter
        self.performance = performance if performance is not None else Performance()
        segmenter.apply_performance(self.performance)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.slide = dict(slide)
        self.model_config = model_config or {}
        self.log_images = log_images
        self.num_classes = segmenter.num_classes
        self.metrics = nn.ModuleDict()
        self.domains: list[str] = []
        self.mean_domains: list[str] = []
        # only trainable tensors are saved, so loading checks the keys itself (see on_load_checkpoint)
        self.strict_loading = False

    # ------------------------------------------------------------------ set-up
    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule
        self.domains = list(getattr(dm, "target_names", []))
        self.mean_domains = list(getattr(dm, "mean_domains", self.domains))
        for name in self.domains:
            if name not in self.metrics:
                self.metrics[name] = SegmentationIoU(self.num_classes, self.segmenter.ignore_index)

    def forward(self, images: torch.Tensor, out_size: tuple[int, int] | None = None) -> torch.Tensor:
        """Per-class probabilities (B, K, H, W) by sliding-window inference with ``slide``, resized to ``out_size``.

        The one prediction path of validation, test, ``src.predict`` and ``src.submit``.
        """
        return slide_inference(self.segmenter.predict, images, self.num_classes, out_size=out_size, **self.slide)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        losses = self.segmenter.loss(batch["image"], batch["label"])
        bs = batch["image"].shape[0]
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=bs)
        for key in ("loss_cross_entropy", "loss_mask", "loss_dice"):  # the final stage's terms
            if key in losses:
                self.log(f"train/{key}", losses[key], batch_size=bs)
        for name, value in self.segmenter.token_adapter.log_scalars().items():
            self.log(f"train/{name}", value.detach().float(), batch_size=bs)
        return losses

    def build_optimizer(self) -> torch.optim.Optimizer:
        """The optimiser over the segmenter's parameter groups, each scaled by its multipliers (method §7.1), fused
        where ``performance.fused_optimizer`` allows it (:meth:`_fused_kwargs`)."""
        groups = self.segmenter.param_groups()
        optimizer = self.optimizer_factory(groups, **self._fused_kwargs(groups))
        apply_multipliers(optimizer)
        return optimizer

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.build_optimizer()
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self.scheduler_factory(optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _fused_kwargs(self, groups: list[dict[str, Any]]) -> dict[str, Any]:
        """``{"fused": True}`` when ``performance.fused_optimizer`` is on, every trainable parameter is on CUDA, the
        optimiser takes ``fused`` and its config does not set it, and Lightning will not clip gradients (it refuses
        to clip with an optimiser that unscales its own gradients); otherwise ``{}``."""
        factory = self.optimizer_factory
        if not self.performance.fused_optimizer or "fused" in getattr(factory, "keywords", {}):
            return {}
        params = [p for group in groups for p in group["params"]]
        if not params or any(p.device.type != "cuda" for p in params):
            return {}
        try:
            takes_fused = "fused" in inspect.signature(factory).parameters
        except (TypeError, ValueError):
            takes_fused = False
        clip = self._trainer is not None and bool(self.trainer.gradient_clip_val)
        return {"fused": True} if takes_fused and not clip else {}

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, batch: dict[str, Any], dataloader_idx: int, stage: str, batch_idx: int) -> None:
        domain = self.domains[dataloader_idx]
        labels = batch["label"]
        # max(1).indices is argmax(1) (the first maximum, NaN counting as maximal), about 3x faster over the class dim
        preds = self(batch["image"], out_size=tuple(labels.shape[-2:])).max(1).indices
        self.metrics[domain].update(preds, labels)
        if stage == "val" and batch_idx < self.log_images:
            self._log_media(domain, batch, preds, batch_idx)

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx, "val", batch_idx)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx, "test", batch_idx)

    def _log_domain_metrics(self, stage: str) -> dict[str, dict[str, torch.Tensor]]:
        results = {}
        for name in self.domains:
            result = self.metrics[name].compute()
            self.metrics[name].reset()
            results[name] = result
            self.log(f"{stage}/{name}/mIoU", result["mIoU"], add_dataloader_idx=False)
            self.log(f"{stage}/{name}/aAcc", result["aAcc"], add_dataloader_idx=False)
            # per-class IoU goes to the dashboards during training; the tables (src/reporting.py) have every class
            for cls_name, iou in zip(CLASS_NAMES, result["IoU"]) if stage == "val" else ():
                if not torch.isnan(iou):
                    self.log(f"{stage}/{name}/IoU/{cls_name}", iou, add_dataloader_idx=False)
        if self.mean_domains:
            self.log(
                f"{stage}/mean_mIoU", mean_miou(results, self.mean_domains), prog_bar=True, add_dataloader_idx=False
            )
        return results

    def on_validation_epoch_end(self) -> None:
        results = self._log_domain_metrics("val")
        if not self.trainer.sanity_checking:  # the run's report (src.callbacks.RunReport) tells the last validation
            self.last_results = {k: {m: v.detach().cpu() for m, v in r.items()} for k, r in results.items()}

    def on_test_epoch_end(self) -> None:
        results = self._log_domain_metrics("test")  # src.eval and RunReport write the table
        self.test_results = {k: {m: v.detach().cpu() for m, v in r.items()} for k, r in results.items()}

    def _log_media(self, domain: str, batch: dict[str, Any], preds: torch.Tensor, batch_idx: int) -> None:
        """The first ``log_images`` validation batches of each domain (a fixed set: the target loaders are not
        shuffled) to W&B: ``val/<domain>/example_<i>`` = the image with the ground truth and the prediction as
        segmentation masks (class labels), ``val/<domain>/depth_<i>`` = the depth VFM's relative depth, and
        ``val/<domain>/attention_<i>`` = the dominant learnable token per patch of every layer (adapters with
        ``attention``: REIN, DepthForge and its ablations)."""
        loggers = [lg for lg in self.loggers if isinstance(lg, WandbLogger)]
        if not loggers or self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        import wandb

        label, pred = batch["label"][0], preds[0]
        h, w = label.shape[-2:]
        image = denormalize(batch["image"][0])
        image = torch.nn.functional.interpolate(image[None].float(), size=(h, w), mode="bilinear")[0]
        class_labels = self._wandb_class_labels()
        masks = {
            "prediction": {"mask_data": pred.cpu().numpy().astype(np.uint8), "class_labels": class_labels},
            "ground_truth": {"mask_data": label.cpu().numpy().astype(np.uint8), "class_labels": class_labels},
        }
        media = {
            f"val/{domain}/example_{batch_idx}": wandb.Image(
                image.round().byte().permute(1, 2, 0).cpu().numpy(), masks=masks, caption=f"{domain} #{batch_idx}"
            )
        }
        depth = self._wandb_depth(batch["image"][:1], (h, w))
        if depth is not None:
            media[f"val/{domain}/depth_{batch_idx}"] = wandb.Image(depth, caption="relative depth (near = bright)")
        attention = self._wandb_attention(batch["image"][:1], (h, w))
        if attention is not None:
            media[f"val/{domain}/attention_{batch_idx}"] = wandb.Image(
                attention, caption="most attended learnable token per patch, per layer (one colour per token)"
            )
        for lg in loggers:
            lg.experiment.log({**media, "trainer/global_step": self.trainer.global_step})

    def _wandb_class_labels(self) -> dict[int, str]:
        """Mask value -> class name for W&B segmentation masks (the ignore label included)."""
        labels = dict(enumerate(CLASS_NAMES[: self.num_classes]))
        labels[int(self.segmenter.ignore_index)] = "ignore"
        return labels

    @torch.no_grad()
    def _wandb_depth(self, images: torch.Tensor, size: tuple[int, int]) -> np.ndarray | None:
        """The depth VFM's relative depth of ``images[0]`` as an RGB picture of ``size``; None without a depth VFM
        (or one that cannot predict depth)."""
        try:
            depth = self.segmenter.depth_map(images[:1])
            if depth is None:
                return None
            depth = depth[0]
        except Exception as err:  # noqa: BLE001 - a picture for the dashboard never stops a validation
            warnings.warn(f"no depth picture for W&B: {err}", stacklevel=2)
            return None
        return depth_to_rgb(depth, size)

    @torch.no_grad()
    def _wandb_attention(self, images: torch.Tensor, size: tuple[int, int]) -> np.ndarray | None:
        """The dominant-token map of every layer for ``images[0]``, side by side, each panel of ``size``
        (:func:`src.attention.layer_strip`, the pictures of ``python -m src.attention``); None for an adapter
        without ``attention`` (frozen, LoRA, AdaptFormer, VPT, FADA)."""
        if not has_attention(self.segmenter.token_adapter):
            return None
        try:
            return layer_strip(self.segmenter, images[:1], size)
        except Exception as err:  # noqa: BLE001 - a picture for the dashboard never stops a validation
            warnings.warn(f"no token-attention picture for W&B: {err}", stacklevel=2)
            return None

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only trainable tensors (method D10); record the model config and, for an exact resume, the random
        state of every rank (torch, CUDA, numpy, Python): each rank's stream differs (the head samples points with
        the global RNG, on different images per rank), so each rank must get its own back (a collective under DDP:
        Lightning calls this hook on every rank)."""
        checkpoint["state_dict"] = {f"segmenter.{k}": v for k, v in self.segmenter.trainable_state_dict().items()}
        checkpoint["model_config"] = self.model_config
        checkpoint["rng"] = {"ranks": gather_objects(self._rng_state())}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("model_config")
        if saved is None or "state_dict" not in checkpoint:
            raise CheckpointError("not a depthforge checkpoint: it has no 'model_config' or no 'state_dict'")
        diffs = config_differences(saved, self.model_config)
        if diffs:
            raise CheckpointError("checkpoint was made for another model configuration:\n  " + "\n  ".join(diffs[:20]))
        self.segmenter.load_trainable_state_dict(
            {k.removeprefix("segmenter."): v for k, v in checkpoint["state_dict"].items()}
        )
        rng = checkpoint.get("rng", {})
        if "ranks" in rng:
            self._restore_rng_state(self._own_rng_state(rng["ranks"]))
        elif "torch" in rng:  # checkpoints written before per-rank states: rank 0's torch/CUDA state only
            self._restore_rng_state(rng)

    def _own_rng_state(self, ranks: list[dict[str, Any]]) -> dict[str, Any]:
        """This rank's saved random state; with another number of processes than the checkpoint's, rank r takes
        rank r mod n's (the run goes on, but cannot repeat the uninterrupted one exactly: said once)."""
        attached = self._trainer is not None
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if attached else (0, 1)
        if len(ranks) != world and rank == 0:
            warnings.warn(
                f"this checkpoint was written by {len(ranks)} process(es) and is resumed by {world}: training goes "
                "on, but the random streams and data shards of the ranks differ from an uninterrupted run's, so the "
                "result is not bit-identical to it",
                stacklevel=2,
            )
        return ranks[rank % len(ranks)]

    @staticmethod
    def _rng_state() -> dict[str, Any]:
        """This process's random state in types that ``torch.load(weights_only=True)`` accepts."""
        _, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
        version, internal, gauss = random.getstate()
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": {
                "keys": torch.from_numpy(keys.astype(np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "cached_gaussian": float(cached),
            },
            "python": {"version": version, "state": list(internal), "gauss": gauss},
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    @staticmethod
    def _restore_rng_state(state: dict[str, Any]) -> None:
        if "torch" in state:
            torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        if "numpy" in state:
            n = state["numpy"]
            keys = n["keys"].numpy().astype(np.uint32)
            np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
        if "python" in state:
            p = state["python"]
            random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
