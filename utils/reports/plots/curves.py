"""Training curves: loss, validation metrics and learning rate per epoch, and
several runs' curves overlaid."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .base import (_empty, _figure, _finish, _legend, _require)


def plot_history(history: Any, synthetic: bool = False, caption: str | None = None) -> Figure:
    """Loss, validation metrics and learning rate per epoch.

    Args:
        history: `History` (its `.epochs`), a list of per-epoch dicts (`epoch`,
            `train_loss`, `val_loss`, `val_auroc`, `val_f1`, `lr`) or a DataFrame of them.
    Example:
        >>> plot_history(history.epochs)  # doctest: +SKIP
    """
    df = history if isinstance(history, pd.DataFrame) else \
        pd.DataFrame(list(getattr(history, "epochs", history)))
    if df.empty:
        return _empty("no epochs to plot", synthetic, caption)
    _require(df, ["epoch", "train_loss"], "plot_history")
    fig, axes = _figure(3, (13, 3.6))
    panels = [("loss", ["train_loss", "val_loss"]),
              ("validation metric", ["val_auroc", "val_auprc", "val_f1", "val_accuracy"]),
              ("learning rate", ["lr"])]
    for ax, (ylabel, cols) in zip(axes, panels):
        for col in (c for c in cols if c in df.columns):
            ax.plot(df["epoch"], df[col], marker="o", label=col)
        ax.set(xlabel="epoch", ylabel=ylabel, title=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        best = getattr(history, "best_epoch", 0)
        if best:
            ax.axvline(best, color="grey", ls=":", label=f"best epoch {best}")
        _legend(ax)
    if "lr" in df.columns and (df["lr"] > 0).all():
        axes[2].set_yscale("log")
    return _finish(fig, synthetic, caption)


def plot_learning_curves(curves: Mapping[str, Sequence[Mapping[str, Any]]],
                         metrics: Sequence[str] = ("val_auroc", "val_loss"),
                         synthetic: bool = False, caption: str | None = None) -> Figure:
    """Several runs' per-epoch histories overlaid, one panel per metric (e.g. the transfer
    notebook's starting points: which learns faster, which ends higher).

    Args:
        curves: run name → its `History.epochs` rows (`epoch` and the metrics).
    """
    if not curves:
        return _empty("no runs to plot", synthetic, caption)
    fig, axes = _figure(len(metrics), (5.5 * len(metrics), 3.8))
    for ax, metric in zip(axes, metrics):
        for name, rows in curves.items():
            df = pd.DataFrame(list(rows))
            if metric in df.columns:
                ax.plot(df["epoch"], df[metric], marker="o", label=name)
        ax.set(xlabel="epoch", ylabel=metric, title=metric)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _legend(ax)
    return _finish(fig, synthetic, caption)
