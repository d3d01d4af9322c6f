"""Two recipe options of `fit` that live outside its loop: a linear learning-rate warm-up
before the schedule, and an exponential moving average (EMA) of the weights.

Both earn their place on short from-scratch runs (measured in `benchmarks/recipes.py`,
README "Recipe benchmark"): Adam at 1e-3 on random weights takes large, noisy first steps,
and after 3 epochs the last weights still jump from batch to batch; the EMA is a cheap
average over the recent steps that validates (and is saved) instead of the last ones.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

__all__ = ["WarmupSchedule", "warmup_scheduler", "make_ema"]


class WarmupSchedule:
    """`LambdaLR` factor: linear from 1/`warm` to 1 over `warm` steps, then 1 (no schedule)
    or a cosine to 0 at `total` steps (`CosineAnnealingLR`'s curve, shifted by the warm-up).

    A class, not a closure, so the scheduler's state_dict (and resume) carries it.
    """

    def __init__(self, warm: int, total: int, cosine: bool):
        self.warm, self.total, self.cosine = max(1, warm), max(1, total), cosine

    def __call__(self, step: int) -> float:
        if step < self.warm:
            return (step + 1) / self.warm
        if not self.cosine:
            return 1.0
        done = min(1.0, (step - self.warm) / max(1, self.total - self.warm))
        return 0.5 * (1.0 + math.cos(math.pi * done))


def warmup_scheduler(opt: torch.optim.Optimizer, cfg: Any, steps_per_epoch: int):
    """The per-batch scheduler for `cfg.warmup_epochs > 0` (cosine or none after it)."""
    warm = max(1, round(cfg.warmup_epochs * steps_per_epoch))
    total = max(1, cfg.epochs * steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(
        opt, WarmupSchedule(warm, total, cosine=cfg.scheduler == "cosine"))


def make_ema(model: nn.Module, cfg: Any):
    """timm's `ModelEmaV3` of `model` (parameters and BatchNorm buffers) for
    `cfg.ema_decay > 0`, else None.

    The decay warms up (`1 - (1 + step)^-3/4`, capped at `ema_decay`): early on the average
    follows the weights closely instead of dragging the random init along, and on a short
    run it averages about the last `step^3/4` steps (~80 after 340 steps).
    """
    if not cfg.ema_decay:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=True, warmup_power=0.75)
