"""Training: `fit` (the loop), losses, schedules (warm-up, EMA, the BatchNorm clock), precise BN,
the history and its records, checkpoints, RNG state, and data-parallel runs (DDP, torchrun).

The public names below are imported lazily (PEP 562): importing the package costs nothing
until a name is used.
"""
from __future__ import annotations

from ..lazy import lazy_exports

_LAZY = {
    "fit": "loop",
    "History": "loop",
    "TrainStep": "loop",
    "recalibrate_batchnorm": "loop",
    "build_loss": "losses",
    "FocalLoss": "losses",
    "load_model": "checkpoint",
    "load_checkpoint": "checkpoint",
    "update_checkpoint": "checkpoint",
    "checkpoint_bytes": "checkpoint",
    "CheckpointError": "checkpoint",
    "train_distributed": "launch",
    "DistributedTrainingError": "launch",
    "make_ema": "schedules",
    "warmup_scheduler": "schedules",
    "BatchNormClock": "schedules",
    "summary_scores": "scores",
}
__all__ = list(_LAZY)

__getattr__ = lazy_exports(__name__, _LAZY)
