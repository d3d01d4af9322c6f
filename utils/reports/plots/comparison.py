"""Several models side by side: metric bars with CIs, each seed's point,
the external train x test matrix, and 07's overlaid test ROC/PR curves."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ...evaluation.results import load_predictions
from .base import (_auto_synthetic, _bars, _empty, _figure, _finish, _legend, _require)
from .scores import plot_roc_pr


def _mean_over(df: pd.DataFrame, metric: str, keys: list[str], over: str,
               ci: bool) -> pd.DataFrame:
    """One row per `keys`: the mean `metric` over its `over` rows (seeds), `_lo`/`_hi` their
    range; a group of one row keeps its bootstrap CI (`ci`), or none. `n`: rows averaged."""
    if df.duplicated(keys + [over]).any():
        dup = df.loc[df.duplicated(keys + [over]), keys + [over]].values.tolist()
        raise ValueError(f"several rows share {keys + [over]}: {dup}; filter the table first")
    bounds = [f"{metric}_lo", f"{metric}_hi"]
    rows = []
    for key, group in df.groupby(keys, sort=False):
        values = group[metric].astype(float)
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        row.update({metric: values.mean(), "n": len(values)})
        if len(values) > 1:
            row.update({bounds[0]: values.min(), bounds[1]: values.max()})
        elif ci:
            row.update({b: float(group[b].iloc[0]) for b in bounds})
        rows.append(row)
    return pd.DataFrame(rows)


def plot_metric_bars(df: pd.DataFrame, metric: str, ci: bool = True, label: str | None = None,
                     hue: str | None = None, synthetic: bool | None = None,
                     caption: str | None = None, over: str | None = None) -> Figure:
    """One bar per model (a group per model when `hue` names a column), with 95% CIs.

    Args:
        df: one row per run: `<metric>`, and `<metric>_lo`/`<metric>_hi` when `ci`.
        label: the column naming the bars; default the first of name, model, step.
        over: a column whose rows one bar averages (e.g. "seed": the full profile trains
            3 per model): the bar is their mean, a dot each row, the whisker their range
            (a bar of a single row keeps its bootstrap CI).
    Example:
        >>> plot_metric_bars(runs.assign(name=runs["step"]), "auroc")  # doctest: +SKIP
        >>> plot_metric_bars(runs.assign(name=runs["variant"]), "f1", over="seed")  # doctest: +SKIP
    """
    label = label or next((c for c in ("name", "model", "step") if c in df.columns), "name")
    bounds = [f"{metric}_lo", f"{metric}_hi"]
    _require(df, [metric, label] + ([hue] if hue else []) + ([over] if over else [])
             + (bounds if ci else []), "plot_metric_bars (ci=False draws no CIs)")
    keys = [label] + ([hue] if hue else [])
    points = df
    if over:
        df = _mean_over(df, metric, keys, over, ci)
        ci = ci or bool(df["n"].gt(1).any())
        df = df.reindex(columns=[*df.columns, *[b for b in bounds if b not in df.columns]])
    if df.duplicated(keys).any():
        raise ValueError(f"several rows share {keys}: {df.loc[df.duplicated(keys), label].tolist()}"
                         "; pass hue= (e.g. 'dataset'), over= (e.g. 'seed') or filter the "
                         "table first")
    order = pd.unique(df[label])

    def wide(col: str) -> pd.DataFrame:
        if hue:
            return df.pivot(index=label, columns=hue, values=col).reindex(order)
        return df.set_index(label)[[col]].set_axis([metric], axis=1)

    values = wide(metric).astype(float)
    # a missing CI (e.g. bootstrap=0) draws no whisker rather than failing
    err = tuple(wide(b).astype(float).fillna(values) for b in bounds) if ci else None
    fig, (ax,) = _figure(size=(max(5.0, 0.8 * len(values) + 2), 4))
    _bars(ax, values, err, fmt="%.3f")
    title = metric + (" with bootstrap 95% CI" if ci else "")
    if over:
        _dots(ax, points, values, metric, label, hue)
        title = (f"{metric}: mean over {over}s (dots), whiskers their range"
                 + (" (a single run: its 95% CI)" if df["n"].eq(1).any() and ci else ""))
    ax.set(xlabel=label, ylabel=metric, title=title)
    if values.min().min() >= 0 and values.max().max() <= 1:
        ax.set_ylim(0, 1.1)
    if hue:
        _legend(ax, title=hue)
    return _finish(fig, _auto_synthetic(points, synthetic), caption)


def _dots(ax: Any, points: pd.DataFrame, values: pd.DataFrame, metric: str, label: str,
          hue: str | None) -> None:
    """Each row of `points` as a dot on its bar (`values`: the bars, as `_bars` laid them)."""
    width = 0.8 / max(len(values.columns), 1)
    at = {name: i for i, name in enumerate(values.index)}
    for j, col in enumerate(values.columns):
        rows = points if not hue else points[points[hue] == col]
        x = [at[n] + (j - (len(values.columns) - 1) / 2) * width for n in rows[label]]
        ax.scatter(x, rows[metric].astype(float), s=14, color="black", zorder=3,
                   label="one run" if j == 0 else None)


def plot_seed_points(rows: Sequence[Mapping[str, Any]], metric: str = "auroc",
                     title: str = "", synthetic: bool = False,
                     caption: str | None = None) -> Figure:
    """Each seed's test `metric` as a dot, the mean over seeds with its 95% CI as a bar.

    Args:
        rows: `07_comparison.json`'s `common` rows of one dataset (`label`, `<metric>`,
            `<metric>_lo`/`_hi`, `per_seed`: list of dicts with `<metric>`).
    """
    if not rows:
        return _empty("no runs to plot", synthetic, caption)
    fig, (ax,) = _figure(size=(7, 0.55 * len(rows) + 1.6))
    for y, row in enumerate(rows):
        seeds = [s[metric] for s in row.get("per_seed", []) if s.get(metric) is not None]
        jitter = np.linspace(-0.15, 0.15, len(seeds)) if len(seeds) > 1 else [0.0]
        ax.scatter(seeds, y + np.asarray(jitter[:len(seeds)]), s=18, color="grey", zorder=3,
                   label="one seed" if y == 0 else None)
        lo, hi = row.get(f"{metric}_lo"), row.get(f"{metric}_hi")
        err = None if lo is None or hi is None else [[row[metric] - lo], [hi - row[metric]]]
        ax.errorbar(row[metric], y, xerr=err, fmt="D", color="crimson", capsize=4, zorder=4,
                    label="mean over seeds, 95% CI" if y == 0 else None)
    ax.set_yticks(range(len(rows)), [str(r.get("label", r.get("model"))) for r in rows])
    ax.invert_yaxis()  # best (first row) on top
    ax.set(xlabel=f"test {metric}", title=title or f"test {metric} per model")
    _legend(ax, loc="best")
    return _finish(fig, synthetic, caption)


def plot_external_matrix(external: Sequence[Mapping[str, Any]],
                         common: Sequence[Mapping[str, Any]] = (), metric: str = "auroc",
                         synthetic: bool = False, caption: str | None = None) -> Figure:
    """Train × test `metric` per architecture, the CI in every cell; the diagonal is the
    model's own test split (`common` rows), the rest its scores on other sources' tests."""
    cells: dict[str, dict[tuple[str, str], Mapping[str, Any]]] = {}
    for row in common:
        cells.setdefault(str(row.get("label", row["model"])), {})[
            (row["dataset"], row["dataset"])] = row
    for row in external:
        cells.setdefault(str(row.get("label", row["model"])), {})[
            (row["train_dataset"], row["test_dataset"])] = row
    models = sorted(m for m, c in cells.items() if any(a != b for a, b in c))
    if not models:
        return _empty("no external scores: no model was tested on another source", synthetic,
                      caption)
    sources = sorted({d for c in cells.values() for pair in c for d in pair})
    ncols = min(3, len(models))
    nrows = math.ceil(len(models) / ncols)
    fig, axes = _figure(ncols, (4.2 * ncols, 0.9 * len(sources) * nrows + 1.5), nrows)
    for ax, model in zip(axes, models):
        grid = np.full((len(sources), len(sources)), np.nan)
        for (train, test), row in cells[model].items():
            i, j = sources.index(train), sources.index(test)
            grid[i, j] = row.get(metric) if row.get(metric) is not None else np.nan
            lo, hi = row.get(f"{metric}_lo"), row.get(f"{metric}_hi")
            ci = "" if lo is None or hi is None else f"\n[{lo:.2f}, {hi:.2f}]"
            ax.text(j, i, f"{grid[i, j]:.3f}{ci}", ha="center", va="center", fontsize=8)
        ax.imshow(grid, cmap="RdYlGn", vmin=0.5, vmax=1.0)
        ax.set_xticks(range(len(sources)), sources)
        ax.set_yticks(range(len(sources)), sources)
        ax.set(xlabel="tested on (test split)", ylabel="trained on", title=model)
    for ax in axes[len(models):]:
        ax.set_axis_off()
    fig.suptitle(f"external validation: test {metric} [95% CI], train source × test source")
    return _finish(fig, synthetic, caption)


def roc_figure(report: dict[str, Any], dataset: str, reports_dir: str | Path = "reports",
               caption: str | None = None):
    """Test ROC and PR curves of every ranked model on `dataset` overlaid (each model's
    first seed: a seed-mean score would be an ensemble, not a model of the table);
    `caption` is written under the figure (`utils.reports.captions`)."""
    curves = {}
    for row in (r for r in report["common"] if r["dataset"] == dataset):
        pred = load_predictions(row["runs"][0], reports_dir)
        test = pred[pred["split"] == "test"]
        curves[f"{row['label']} ({row['runs'][0]})"] = (test["target"].to_numpy(),
                                                       test["prob"].to_numpy())
    fig = plot_roc_pr(curves, synthetic=bool(report.get("synthetic")), caption=caption)
    fig.suptitle(f"{dataset}: test split ROC and PR curves (first seed of each model)")
    return fig
