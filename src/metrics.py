"""Dataset-level segmentation IoU (docs/method.md §8.1), accumulated per domain and synchronised across DDP ranks."""

from __future__ import annotations

import torch
from torchmetrics import Metric

from src.data.labels import IGNORE_INDEX


class SegmentationIoU(Metric):
    """Accumulates a K×K confusion matrix over a whole dataset, as mmseg's IoUMetric.

    IoU_c = I_c / U_c with the union of the *dataset-level* histograms; classes with U_c = 0 are NaN and skipped
    by the mean. ``compute()`` returns ``{"mIoU": %, "IoU": (K,) %, "aAcc": %}`` (mIoU rounded to 2 decimals).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, num_classes: int = 19, ignore_index: int = IGNORE_INDEX, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.add_state("confmat", default=torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """``preds``: (B,H,W) class indices; ``target``: (B,H,W) train IDs with ``ignore_index``."""
        if preds.shape != target.shape:
            raise ValueError(f"prediction {tuple(preds.shape)} and label {tuple(target.shape)} differ in shape")
        keep = target != self.ignore_index
        t, p = target[keep].long(), preds[keep].long()
        if t.numel() and (t.min() < 0 or t.max() >= self.num_classes):
            raise ValueError(f"label values must be in [0, {self.num_classes}) or {self.ignore_index}")
        bins = torch.bincount(t * self.num_classes + p, minlength=self.num_classes**2)
        self.confmat += bins.view(self.num_classes, self.num_classes)

    def compute(self) -> dict[str, torch.Tensor]:
        cm = self.confmat.double()
        intersection = cm.diag()
        union = cm.sum(0) + cm.sum(1) - intersection
        iou = torch.where(union > 0, intersection / union.clamp(min=1), torch.full_like(union, float("nan")))
        miou = torch.round(torch.nanmean(iou) * 100 * 100) / 100
        acc = intersection.sum() / cm.sum().clamp(min=1) * 100
        return {"mIoU": miou, "IoU": iou * 100, "aAcc": acc}


def mean_miou(results: dict[str, dict[str, torch.Tensor]], domains: list[str]) -> torch.Tensor:
    """The mean of the per-domain mIoU over ``domains`` (method §8.2), skipping a domain whose mIoU is NaN."""
    missing = [d for d in domains if d not in results]
    if missing:
        raise KeyError(f"no results for the domains {missing}; have {sorted(results)}")
    return torch.stack([torch.as_tensor(results[d]["mIoU"]) for d in domains]).nanmean()
