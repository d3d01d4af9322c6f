"""Figures for the notebooks: pure functions that take data and return a `Figure`.

Figures are built with `matplotlib.figure.Figure` rather than `plt.subplots`: they never
touch pyplot's global state, so nothing leaks in loops, they render on any backend (Agg in
tests and papermill), and a notebook shows a returned figure once (a pyplot figure would be
shown twice: once as the cell's value, once by the inline backend). Nothing here calls
`plt.show`. Figures that show demo data carry a "synthetic demo data" stamp: pass
`synthetic=True`, or leave `None` where the input has a `synthetic` column. Every figure
function takes `caption=` (text under the figure naming dataset and split: build it with
`utils.reports.captions.caption_text`).
"""
from __future__ import annotations

from .base import SYNTHETIC_STAMP, save_figure
from .comparison import plot_external_matrix, plot_metric_bars, plot_seed_points, roc_figure
from .curves import plot_history, plot_learning_curves
from .data import (image_grid, plot_box_stats, plot_class_balance, plot_cooccurrence,
                   plot_image_sizes)
from .scores import (plot_confusion, plot_per_finding_auroc, plot_reliability, plot_roc_pr,
                     plot_threshold_sweep)

__all__ = ["plot_history", "plot_learning_curves", "plot_roc_pr", "plot_confusion",
           "plot_reliability", "plot_threshold_sweep", "plot_per_finding_auroc",
           "plot_metric_bars", "plot_seed_points", "plot_external_matrix", "roc_figure",
           "plot_class_balance", "plot_image_sizes", "image_grid", "plot_box_stats",
           "plot_cooccurrence", "save_figure", "SYNTHETIC_STAMP"]
