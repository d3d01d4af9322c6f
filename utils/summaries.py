"""Tables (and overlaid ROC figures) built from results JSON: what the reports show.

Reads results only; imports no training code (the one-way arrows of docs/ARCHITECTURE.md).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["METRICS", "metrics_table", "per_finding_table", "comparison_tables",
           "roc_by_dataset"]

METRICS = ("auroc", "auprc", "f1", "accuracy", "precision", "recall", "specificity")


def metrics_table(results: dict[str, Any], split: str = "test") -> pd.DataFrame:
    """Metric, value and bootstrap 95% CI of one run's split, one row per metric."""
    block = results.get(split, {})
    rows = []
    for name in METRICS:
        lo, hi = (block.get(f"{name}_ci") or [None, None])[:2]
        rows.append({"metric": name, "value": block.get(name), "ci_low": lo, "ci_high": hi})
    table = pd.DataFrame(rows).set_index("metric")
    table.attrs["threshold"] = results.get("threshold", {})
    return table.round(3)


def per_finding_table(results: dict[str, Any]) -> pd.DataFrame:
    """Per-finding AUROC/AUPRC of a multi-label (NIH) run, best first; macro means in attrs."""
    table = pd.DataFrame(results.get("per_finding") or [])
    if table.empty:
        return table
    table = table.set_index("finding").sort_values("auroc", ascending=False).round(3)
    table.attrs["macro"] = results.get("per_finding_macro") or {}
    return table


def _with_ci(runs: pd.DataFrame, metric: str) -> pd.Series:
    def fmt(row: pd.Series) -> str:
        value, lo, hi = row.get(metric), row.get(f"{metric}_lo"), row.get(f"{metric}_hi")
        if pd.isna(value):
            return "–"
        return f"{value:.3f}" + ("" if pd.isna(lo) else f" ({lo:.3f}–{hi:.3f})")
    return runs.apply(fmt, axis=1)


def comparison_tables(runs: pd.DataFrame, metrics: tuple[str, ...] = METRICS) -> dict[str, pd.DataFrame]:
    """One table per dataset (never one ranking across datasets), sorted by AUROC,
    each cell "value (95% CI)"."""
    tables = {}
    for dataset, group in runs.groupby("dataset"):
        group = group.sort_values("auroc", ascending=False)
        table = pd.DataFrame({"step": group["step"], "model": group["model"]})
        for metric in metrics:
            table[metric] = _with_ci(group, metric)
        table["threshold"] = group["threshold"].round(3).astype(str) + " (" + \
            group["threshold_policy"].astype(str) + ")"
        if group["synthetic"].any():
            table.attrs["note"] = "synthetic demo data"
        tables[str(dataset)] = table.set_index("step")
    return tables


def roc_by_dataset(runs: pd.DataFrame, reports_dir: str | Path) -> list:
    """One ROC/PR figure per dataset with every run's test curve overlaid."""
    from .plots import plot_roc_pr
    from .results import load_predictions

    figures = []
    for dataset, group in runs.groupby("dataset"):
        curves = {}
        for step in group["step"]:
            try:
                pred = load_predictions(step, reports_dir)
            except FileNotFoundError:  # a run from before predictions were saved
                continue
            test = pred[pred["split"] == "test"]
            curves[step] = (test["target"].to_numpy(), test["prob"].to_numpy())
        if curves:
            fig = plot_roc_pr(curves, synthetic=bool(group["synthetic"].any()))
            fig.suptitle(f"{dataset}: test ROC and PR curves")
            figures.append(fig)
    return figures
