"""Losses on logits: BCE, BCE with a positive-class weight, and focal loss.

The models return logits; every loss here applies the sigmoid itself (numerically stable
`binary_cross_entropy_with_logits`), for binary (`B×1`) and multi-label (`B×14`) targets.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FocalLoss", "build_loss", "pos_weight_from_labels", "LOSSES"]

LOSSES = ("bce", "weighted_bce", "focal")


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): BCE scaled by `(1 - p_t)^gamma`, so confidently right
    examples count little and training focuses on the hard ones.

    torchvision's `sigmoid_focal_loss` has the same formula but no `pos_weight`, hence this
    small module. `alpha` weights positives (`alpha`) against negatives (`1 - alpha`);
    `None` disables it. `pos_weight` (one value or one per class) multiplies the positive
    term as in `BCEWithLogitsLoss`.
    """

    def __init__(self, alpha: float | None = 0.25, gamma: float = 2.0,
                 pos_weight: torch.Tensor | float | None = None, reduction: str = "mean"):
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction={reduction!r} is not one of 'mean', 'sum', 'none'")
        self.alpha, self.gamma, self.reduction = alpha, gamma, reduction
        weight = None if pos_weight is None else torch.as_tensor(pos_weight, dtype=torch.float32)
        self.register_buffer("pos_weight", weight)  # a buffer moves with .to(device)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = targets.to(logits.dtype)
        bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none",
                                                 pos_weight=self.pos_weight)
        p = torch.sigmoid(logits)
        p_t = p * targets + (1 - p) * (1 - targets)   # probability given to the true label
        loss = bce * (1 - p_t) ** self.gamma
        if self.alpha is not None:
            loss = (self.alpha * targets + (1 - self.alpha) * (1 - targets)) * loss
        if self.reduction == "mean":
            return loss.mean()
        return loss.sum() if self.reduction == "sum" else loss

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, reduction={self.reduction!r}"


def pos_weight_from_labels(labels: np.ndarray) -> torch.Tensor:
    """Per-class negatives/positives of the training labels (`N` or `N×K` of 0/1).

    A class with no positives (or no negatives) in the split gets 1.0: its weight cannot
    change the loss of a split without positives, and 0 would silence its positives.
    """
    labels = np.asarray(labels, dtype=np.float64).reshape(len(labels), -1)
    pos = labels.sum(0)
    neg = len(labels) - pos
    degenerate = (pos == 0) | (neg == 0)
    if degenerate.any():
        warnings.warn(f"classes {np.flatnonzero(degenerate).tolist()} have no positive or no "
                      f"negative training labels: their pos_weight is set to 1.0", stacklevel=2)
    weight = np.where(degenerate, 1.0, neg / np.where(pos == 0, 1, pos))
    return torch.as_tensor(weight, dtype=torch.float32)


def build_loss(cfg: Any, train_labels: np.ndarray) -> nn.Module:
    """The loss named by `cfg.loss`, on logits.

    Args:
        cfg: a RunConfig (reads `loss`, `pos_weight`, `focal_gamma`, `focal_alpha`).
        train_labels: the training split's targets, `N×K` (or `N`) of 0/1; used by
            `weighted_bce` when `cfg.pos_weight == 0` (neg/pos per class).
    Example:
        >>> from utils import make_config
        >>> build_loss(make_config({"loss": "weighted_bce"}), np.array([0, 0, 0, 1]))
        BCEWithLogitsLoss()
    """
    n_classes = np.asarray(train_labels).reshape(len(train_labels), -1).shape[1]
    fixed = torch.full((n_classes,), float(cfg.pos_weight)) if cfg.pos_weight > 0 else None
    if cfg.loss == "bce":
        return nn.BCEWithLogitsLoss()
    if cfg.loss == "weighted_bce":
        weight = fixed if fixed is not None else pos_weight_from_labels(train_labels)
        return nn.BCEWithLogitsLoss(pos_weight=weight)
    if cfg.loss == "focal":
        alpha = cfg.focal_alpha if cfg.focal_alpha >= 0 else None
        if alpha not in (None, 0.5) and getattr(cfg, "sampler", "none") == "balanced":
            warnings.warn(f"focal_alpha={alpha} re-weights the classes that sampler='balanced' "
                          f"already balances (alpha < 0.5 pushes towards negatives, > 0.5 "
                          f"towards positives); pass focal_alpha=-1 (no alpha) with the sampler "
                          f"(README, recipe benchmark)", stacklevel=2)
        return FocalLoss(alpha=alpha, gamma=cfg.focal_gamma, pos_weight=fixed)
    raise ValueError(f"loss={cfg.loss!r} is not one of {list(LOSSES)}")
