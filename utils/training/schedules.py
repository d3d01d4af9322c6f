"""Schedules `fit` keeps outside its loop: a linear learning-rate warm-up before the
schedule, an exponential moving average (EMA) of the weights, and the BatchNorm momentum of
a model built from random init (`BatchNormClock`).

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

__all__ = ["WarmupSchedule", "warmup_scheduler", "make_ema", "BatchNormClock"]


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


class BatchNormClock:
    """Warm-started BatchNorm statistics for a random-init model, without a host sync per layer.

    `utils.models` marks the BN layers of a model built from random init with
    `momentum=None`. Left to torch, that averages the running statistics over every batch of
    the run, computing the factor with `float(num_batches_tracked)` in every training forward:
    one CPU-GPU synchronisation per BN layer per step (121 for DenseNet-121) and, under
    `torch.compile`, a graph break per layer. This clock counts the batches on the host and,
    before each training forward (`tick`), sets each marked layer's momentum to
    `max(1 / (its count + 1), 0.1)`: the plain average of the first ten batches (no memory of
    the init's mean 0 / variance 1, what made eval outputs collapse), then torch's default
    0.1, so the statistics follow the weights as training moves them. An average over the
    whole run keeps early, very different weights in it: on the demo (seed 42) the
    hand-written ResNet-18 without regularisation ended with validation BCE 3.00 in eval mode
    (0.11 with its statistics recomputed) and a test sensitivity of 0.42 at its fixed 0.5
    threshold; warm-started, and with precise BN judged on the validation loss
    (`utils.training.precise_bn`), it is 0.91-0.95 over seeds 42, 1 and 2 (`python run_all.py
    -p seed=...`). The counts are read from `num_batches_tracked` once, when the clock starts
    (after a resume's `load_state_dict`); layers are found when it starts too, so it sees the
    modules `SyncBatchNorm.convert_sync_batchnorm` created (it copies `momentum=None`). A
    layer that runs twice in one forward would be counted once (none of the registry's does).

    `compiled=True` (`cfg.compile`): dynamo guards a module's float attributes, so a momentum
    that changes every step recompiles the graph every step (measured: 8 graphs in 8 steps,
    then its recompile limit falls back to eager). A compiled run therefore gets momentum 1
    for each layer's first batch and 0.1 after: two training graphs. `restore()` puts
    `momentum=None` back, so the model leaves `fit` marked as it came.
    """

    WARM_BATCHES = 10        # the first batches are averaged plainly
    COMPILED_MOMENTUM = 0.1  # torch's default

    def __init__(self, model: nn.Module, compiled: bool = False):
        self.layers = [m for m in model.modules()
                       if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.momentum is None
                       and m.track_running_stats and m.num_batches_tracked is not None]
        self.compiled = compiled
        # one synchronisation for all layers, once per fit (not per step)
        self.counts: list[int] = (torch.stack([m.num_batches_tracked for m in self.layers])
                                  .tolist() if self.layers else [])

    def momentum(self, count: int) -> float:
        """The factor for a layer's next batch after `count` batches."""
        if self.compiled:
            return 1.0 if count == 0 else self.COMPILED_MOMENTUM
        return max(1.0 / (count + 1), 1.0 / self.WARM_BATCHES)

    def tick(self) -> None:
        """Before a forward: layers in training mode update their statistics with it."""
        for i, layer in enumerate(self.layers):
            if layer.training:
                layer.momentum = self.momentum(self.counts[i])
                self.counts[i] += 1

    def restore(self) -> None:
        for layer in self.layers:
            layer.momentum = None
