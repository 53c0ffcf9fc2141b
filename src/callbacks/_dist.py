"""Small collective helpers the callbacks share: every rank must take the same decision at the same point."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch.distributed as dist


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def any_rank(trainer: L.Trainer, flag: bool) -> bool:
    """True on every rank when ``flag`` is True on at least one (a collective: call it on all ranks)."""
    if trainer.world_size <= 1 or not distributed():
        return bool(flag)
    return bool(trainer.strategy.reduce_boolean_decision(bool(flag), all=False))


def gather_objects(obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (a collective: call it on all ranks); ``[obj]`` without DDP."""
    if not distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
