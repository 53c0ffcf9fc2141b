"""Learning-rate schedules stepped every iteration, built from the optimiser and the run's number of steps.

``SegmentationModule.configure_optimizers`` calls a configured factory as ``factory(optimizer, total_steps)``;
each schedule takes what it needs from there, so no value is read back out of another part's config.

- :func:`one_cycle`: the paper's recipe (docs/method.md §7.2, D5), torch's ``OneCycleLR`` peaking at each group's
  learning rate (the optimiser's ``lr`` times the group's multiplier).
- :func:`poly`: mmseg's ``PolyLR`` by iteration, lr = (lr₀ − η_min)·(1 − t/T)^power + η_min, used by the authors'
  REIN-style baseline configs.
"""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR


def one_cycle(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    pct_start: float = 0.1,
    anneal_strategy: str = "cos",
    div_factor: float = 10.0,
    final_div_factor: float = 10.0,
    cycle_momentum: bool = False,
) -> LRScheduler:
    """OneCycle over ``total_steps`` with ``max_lr`` = each group's current learning rate."""
    try:
        return OneCycleLR(
            optimizer,
            max_lr=[group["lr"] for group in optimizer.param_groups],
            total_steps=total_steps,
            pct_start=pct_start,
            anneal_strategy=anneal_strategy,
            div_factor=div_factor,
            final_div_factor=final_div_factor,
            cycle_momentum=cycle_momentum,
        )
    except ZeroDivisionError as err:  # torch divides by the warm-up length, which is 0 here
        raise ValueError(
            f"a OneCycle warm-up of pct_start·total_steps = {pct_start}·{total_steps} = 1 step is degenerate; "
            "change trainer.max_steps or schedules.one_cycle.pct_start"
        ) from err


def poly(optimizer: torch.optim.Optimizer, total_steps: int, power: float = 0.9, eta_min: float = 0.0) -> LRScheduler:
    """mmseg's iteration-based ``PolyLR``: (lr₀ − η_min)·(1 − t/T)^power + η_min for each group's lr₀."""
    if total_steps < 1:
        raise ValueError(f"poly schedule needs total_steps >= 1, got {total_steps}")
    base = [group["lr"] for group in optimizer.param_groups]

    def factor(lr0: float):
        def at(step: int) -> float:
            progress = min(step, total_steps) / total_steps
            return ((lr0 - eta_min) * (1 - progress) ** power + eta_min) / lr0 if lr0 else 0.0

        return at

    return LambdaLR(optimizer, [factor(lr0) for lr0 in base])
