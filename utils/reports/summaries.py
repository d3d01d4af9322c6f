"""Tables of one run built from its results JSON (the comparison of runs: utils.evaluation.comparison).

Reads results only; imports no training code (the one-way arrows of docs/ARCHITECTURE.md).
"""
from __future__ import annotations

from typing import Any

import pandas as pd

__all__ = ["METRICS", "metrics_table", "per_finding_table"]

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
