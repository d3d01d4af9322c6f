"""The validation scores `fit` monitors each epoch, in plain numpy/scikit-learn.

`fit` (training) and the evaluation both read them; they live here, below both, so the
training loop imports no evaluation code.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn import metrics as skm

__all__ = ["summary_scores", "as_columns", "safe_metric"]


def safe_metric(fn, *args) -> float:
    """A metric that is undefined for a single-class sample (AUROC, AUPRC) → NaN."""
    if len(np.unique(args[0])) < 2:
        return math.nan
    return float(fn(*args))


def as_columns(Y: Any, P: Any) -> tuple[np.ndarray, np.ndarray]:
    Y, P = np.asarray(Y, dtype=float), np.asarray(P, dtype=float)
    return Y.reshape(len(Y), -1), P.reshape(len(P), -1)


def summary_scores(Y: Any, P: Any, threshold: float = 0.5) -> dict[str, float]:
    """The two numbers `fit` monitors: macro AUROC over the classes that have both labels
    (NaN when none has) and macro F1 at `threshold` (plain F1 for one class)."""
    Y, P = as_columns(Y, P)
    aurocs = [safe_metric(skm.roc_auc_score, Y[:, k], P[:, k]) for k in range(Y.shape[1])]
    defined = [a for a in aurocs if not math.isnan(a)]
    f1 = skm.f1_score(Y.astype(int), (P >= threshold).astype(int), average="macro",
                      zero_division=0) if Y.shape[1] > 1 else \
        skm.f1_score(Y[:, 0].astype(int), (P[:, 0] >= threshold).astype(int), zero_division=0)
    return {"auroc": float(np.mean(defined)) if defined else math.nan, "f1": float(f1)}
