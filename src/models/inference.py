"""Sliding-window inference (docs/method.md §6.6) with all windows of an image run as one batch."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F


def window_grid(height: int, width: int, crop: int, stride: int) -> list[tuple[int, int, int, int]]:
    """mmseg's window placement: (y1, y2, x1, x2) per window, the last ones flush with the border."""
    n_h = max(height - crop + stride - 1, 0) // stride + 1
    n_w = max(width - crop + stride - 1, 0) // stride + 1
    windows = []
    for a in range(n_h):
        for b in range(n_w):
            y2, x2 = min(a * stride + crop, height), min(b * stride + crop, width)
            windows.append((max(y2 - crop, 0), y2, max(x2 - crop, 0), x2))
    return windows


@torch.no_grad()
def slide_inference(
    predict: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    num_classes: int,
    *,
    crop: int,
    stride: int,
    max_batch: int | None = None,
    out_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Average ``predict`` over sliding windows and resize to ``out_size`` (bilinear, align_corners=False).

    ``crop`` and ``stride`` have no defaults: the model config's ``slide`` is their one home (the paper's 512/341).

    ``predict(crops (n,3,h,w)) -> (n,K,h,w)``. The windows of all images are stacked into one batch (split into
    chunks of ``max_batch`` if given). Every window has the same size because images smaller than ``crop`` in a
    dimension give windows of the whole extent there.
    """
    b, _, h, w = images.shape
    windows = window_grid(h, w, crop, stride)
    crops = torch.stack([images[i, :, y1:y2, x1:x2] for i in range(b) for (y1, y2, x1, x2) in windows])
    chunks = crops.split(max_batch) if max_batch else (crops,)
    scores = torch.cat([predict(c).float() for c in chunks]).view(b, len(windows), num_classes, *crops.shape[-2:])
    canvas = images.new_zeros((b, num_classes, h, w), dtype=torch.float32)
    count = images.new_zeros((1, 1, h, w), dtype=torch.float32)
    for k, (y1, y2, x1, x2) in enumerate(windows):
        canvas[:, :, y1:y2, x1:x2] += scores[:, k]
        count[:, :, y1:y2, x1:x2] += 1
    canvas /= count
    if out_size is not None and tuple(out_size) != (h, w):
        canvas = F.interpolate(canvas, size=tuple(out_size), mode="bilinear", align_corners=False)
    return canvas


def eval_autocast(precision: str | int | None, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast Lightning applies for a trainer ``precision`` outside the trainer (``src.predict``,
    ``src.submit``): bf16 mixed on any device, fp16 mixed on CUDA only, nothing for full precision."""
    precision = str(precision or "32-true")
    if "mixed" in precision and precision.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if "mixed" in precision and precision.startswith("16") and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()
