"""One model on one split: ROC and PR curves, the confusion matrix, calibration,
the threshold sweep on validation, per-finding AUROC."""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .base import (_figure, _finish, _legend, _require)


def plot_roc_pr(curves: Mapping[str, tuple[Any, Any]], synthetic: bool = False,
                caption: str | None = None) -> Figure:
    """ROC and precision-recall curves of several models overlaid, AUROC / AP in the legend.

    Args:
        curves: name → (y_true 0/1, predicted probability).
    """
    from sklearn.metrics import (average_precision_score, precision_recall_curve, roc_auc_score,
                                 roc_curve)

    if not curves:
        raise ValueError("plot_roc_pr needs at least one (y_true, y_prob) pair")
    fig, (roc, pr) = _figure(2, (11, 4.5))
    prevalences = set()
    for name, (y, p) in curves.items():
        y, p = np.asarray(y).ravel().astype(int), np.asarray(p, dtype=float).ravel()
        if len(np.unique(y)) < 2:  # no curve exists; say so on the figure, do not fail
            roc.text(0.5, 0.3, f"{name}: one class only, no curve", ha="center", fontsize=8)
            continue
        fpr, tpr, _ = roc_curve(y, p)
        roc.plot(fpr, tpr, label=f"{name} (AUROC {roc_auc_score(y, p):.3f})")
        precision, recall, _ = precision_recall_curve(y, p)
        pr.plot(recall, precision, label=f"{name} (AP {average_precision_score(y, p):.3f})")
        prevalences.add(round(float(y.mean()), 4))
    roc.plot([0, 1], [0, 1], ls="--", color="grey", label="chance")
    if len(prevalences) == 1:  # one shared test set: its chance level
        prev = prevalences.pop()
        pr.axhline(prev, ls="--", color="grey", label=f"chance (prevalence {prev:.2f})")
    roc.set(xlabel="false positive rate (1 − specificity)", ylabel="true positive rate "
            "(sensitivity)", title="ROC", xlim=(0, 1), ylim=(0, 1.01))
    pr.set(xlabel="recall (sensitivity)", ylabel="precision", title="precision-recall",
           xlim=(0, 1), ylim=(0, 1.01))
    for ax in (roc, pr):
        _legend(ax, loc="lower right" if ax is roc else "lower left")
    return _finish(fig, synthetic, caption)


def plot_confusion(cm: Any, labels: Sequence[str] = ("Normal", "Pneumonia"),
                   normalize: bool = False, synthetic: bool = False,
                   caption: str | None = None) -> Figure:
    """Confusion matrix (rows true, columns predicted); `normalize` shows row fractions."""
    import seaborn as sns

    cm = np.asarray(cm, dtype=float)
    if cm.shape != (len(labels), len(labels)):
        raise ValueError(f"confusion matrix of shape {cm.shape} does not match labels {labels}")
    rows = cm.sum(axis=1, keepdims=True)
    data = cm / np.where(rows == 0, 1, rows) if normalize else cm
    annot = [[f"{d:.2f}\n({int(c)})" if normalize else f"{int(c)}" for d, c in zip(dr, cr)]
             for dr, cr in zip(data, cm)]
    fig, (ax,) = _figure(size=(4.8, 4))
    sns.heatmap(data, annot=np.array(annot), fmt="", cmap="Blues", vmin=0, ax=ax,
                xticklabels=labels, yticklabels=labels, cbar_kws={"label": "fraction of "
                "true class" if normalize else "images"})
    ax.set(xlabel="predicted", ylabel="true", title=f"confusion matrix (n={int(cm.sum())})")
    return _finish(fig, synthetic, caption)


def plot_reliability(calibration: Mapping[str, Any], synthetic: bool = False,
                     caption: str | None = None) -> Figure:
    """Reliability diagram and bin counts from `utils.evaluation.metrics.calibration` (or name → it)."""
    runs = {"model": calibration} if "bin_confidence" in calibration else dict(calibration)
    fig, (rel, hist) = _figure(2, (10, 4))
    rel.plot([0, 1], [0, 1], ls="--", color="grey", label="perfect calibration")
    for name, cal in runs.items():
        conf = np.asarray(cal["bin_confidence"], dtype=float)
        acc = np.asarray(cal["bin_accuracy"], dtype=float)
        ok = np.isfinite(conf) & np.isfinite(acc)  # empty bins have no accuracy to show
        rel.plot(conf[ok], acc[ok], marker="o", label=f"{name} (ECE {cal['ece']:.3f})")
        edges = np.asarray(cal["bin_edges"], dtype=float)
        hist.bar(edges[:-1], np.asarray(cal["bin_count"], dtype=float), width=np.diff(edges),
                 align="edge", alpha=0.5, edgecolor="black", label=name)
    rel.set(xlabel="mean predicted probability", ylabel="fraction positive",
            title="reliability", xlim=(0, 1), ylim=(0, 1))
    hist.set(xlabel="predicted probability", ylabel="images", title="images per bin")
    _legend(rel)
    _legend(hist)
    return _finish(fig, synthetic, caption)


def plot_threshold_sweep(y_val: Any, p_val: Any, chosen: float | Mapping[str, Any],
                         synthetic: bool = False, caption: str | None = None) -> Figure:
    """F1, sensitivity and specificity against the threshold, with the chosen one marked.

    Args:
        chosen: the threshold, or `choose_threshold`'s dict (`value`, `policy`).
    """
    y = np.asarray(y_val).ravel().astype(bool)
    p = np.asarray(p_val, dtype=float).ravel()
    t = np.linspace(0, 1, 201)
    pred = p[None, :] >= t[:, None]
    tp, fp = (pred & y).sum(1), (pred & ~y).sum(1)
    fn, tn = y.sum() - tp, (~y).sum() - fp
    fig, (ax,) = _figure(size=(6.5, 4))
    ax.plot(t, 2 * tp / np.maximum(2 * tp + fp + fn, 1), label="F1")
    ax.plot(t, tp / max(int(y.sum()), 1), label="sensitivity (recall)")
    ax.plot(t, tn / max(int((~y).sum()), 1), label="specificity")
    value = float(chosen["value"]) if isinstance(chosen, Mapping) else float(chosen)
    policy = f" ({chosen.get('policy')})" if isinstance(chosen, Mapping) else ""
    ax.axvline(value, color="black", ls="--", label=f"chosen {value:.3f}{policy}")
    ax.set(xlabel="threshold", ylabel="score", title=f"threshold sweep (validation, "
           f"n={len(y)})", xlim=(0, 1), ylim=(0, 1.02))
    _legend(ax)
    return _finish(fig, synthetic, caption)


def _finding_table(table: Any) -> pd.DataFrame:
    if isinstance(table, Mapping) and "per_finding" in table:
        table = table["per_finding"]  # evaluate.multilabel_metrics' dict
    if isinstance(table, Mapping) and all(np.isscalar(v) for v in table.values()):
        table = [{"finding": k, "auroc": v} for k, v in table.items()]
    df = pd.DataFrame(table)
    if "finding" not in df.columns:
        df = df.rename_axis("finding").reset_index()
    _require(df, ["finding", "auroc"], "plot_per_finding_auroc")
    return df.assign(auroc=pd.to_numeric(df["auroc"], errors="coerce"))


def plot_per_finding_auroc(table: Any, synthetic: bool = False,
                           caption: str | None = None) -> Figure:
    """Per-finding test AUROC (NIH), best first, against chance and the macro mean.

    Args:
        table: `multilabel_metrics`' dict, its `per_finding` rows, a DataFrame with
            `finding`, `auroc` (optional `n_pos`, `auroc_lo`/`auroc_hi`) or finding → AUROC.
    """
    df = _finding_table(table).sort_values("auroc", ascending=True, na_position="first")
    names = [f"{f} (n+={int(n)})" if "n_pos" in df.columns else str(f)
             for f, n in zip(df["finding"], df.get("n_pos", df["finding"]))]
    fig, (ax,) = _figure(size=(7, 0.35 * len(df) + 1.5))
    xerr = None
    if {"auroc_lo", "auroc_hi"} <= set(df.columns):
        xerr = np.abs(np.vstack([df["auroc"] - df["auroc_lo"], df["auroc_hi"] - df["auroc"]]))
    ax.barh(names, df["auroc"].fillna(0), xerr=xerr, color="steelblue")
    for y, v in enumerate(df["auroc"]):
        ax.text(0.01 if math.isnan(v) else v + 0.01, y, "n/a (one class)" if math.isnan(v)
                else f"{v:.3f}", va="center", fontsize=7)
    ax.axvline(0.5, color="grey", ls="--", label="chance")
    macro = df["auroc"].mean()
    ax.axvline(macro, color="crimson", ls=":", label=f"macro mean {macro:.3f}")
    ax.set(xlabel="test AUROC", title="AUROC per finding", xlim=(0, 1.1))
    _legend(ax, loc="lower right")
    return _finish(fig, synthetic, caption)
