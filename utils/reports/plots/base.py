"""What every figure shares: a pyplot-free `Figure`, the caption under it, the
"synthetic demo data" stamp, and an atomic save."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ...fileio import atomic_path
from ..captions import add_caption

SYNTHETIC_STAMP = "synthetic demo data"


_LABEL_NAMES = {0: "Normal", 1: "Pneumonia"}


def _figure(ncols: int = 1, size: tuple[float, float] = (6, 4), nrows: int = 1):
    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes.ravel()


def _finish(fig: Figure, synthetic: bool | None, caption: str | None = None) -> Figure:
    """Stamp demo figures and write the caption (`utils.reports.captions`) under the figure."""
    add_caption(fig, caption)
    if synthetic:  # not the suptitle (callers set their own); the layout makes room for it
        fig.supxlabel(SYNTHETIC_STAMP, x=0.995, ha="right", fontsize=9, color="crimson",
                      fontweight="bold")
    return fig


def _auto_synthetic(df: pd.DataFrame, synthetic: bool | None) -> bool:
    if synthetic is not None:
        return bool(synthetic)
    return bool("synthetic" in df.columns and df["synthetic"].eq(True).any())


def _empty(message: str, synthetic: bool | None = False, caption: str | None = None) -> Figure:
    """A visible 'nothing to show' figure, so a missing source never fails silently."""
    fig, (ax,) = _figure(size=(5, 1.5))
    ax.text(0.5, 0.5, message, ha="center", va="center")
    ax.set_axis_off()
    return _finish(fig, synthetic, caption)


def _legend(ax: Any, **kwargs: Any) -> None:
    if ax.get_legend_handles_labels()[0]:  # an empty legend only warns
        ax.legend(fontsize=8, **kwargs)


def _require(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} needs column(s) {missing}; got {list(df.columns)}")


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write `fig` atomically (a crash never leaves half a PNG); format from the suffix."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if not fmt:
        raise ValueError(f"{path}: add a suffix (.png, .svg, .pdf) to choose the format")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight")
    return path


def _bars(ax: Any, table: pd.DataFrame, err: tuple[pd.DataFrame, pd.DataFrame] | None = None,
          fmt: str = "%d") -> None:
    """Grouped bars: one group per index entry, one bar per column."""
    x = np.arange(len(table))
    width = 0.8 / max(len(table.columns), 1)
    for i, col in enumerate(table.columns):
        yerr = None if err is None else np.abs(np.vstack([table[col] - err[0][col],
                                                          err[1][col] - table[col]]))
        bars = ax.bar(x + (i - (len(table.columns) - 1) / 2) * width, table[col], width,
                      yerr=yerr, capsize=3, label=str(col))
        ax.bar_label(bars, fmt=fmt, fontsize=7, padding=2)
    ax.set_xticks(x, [str(i) for i in table.index], rotation=20, ha="right")
