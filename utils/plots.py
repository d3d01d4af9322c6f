"""Figures for the notebooks: pure functions that take data and return a `Figure`.

Figures are built with `matplotlib.figure.Figure` rather than `plt.subplots`: they never
touch pyplot's global state, so nothing leaks in loops, they render on any backend (Agg in
tests and papermill), and a notebook shows a returned figure once (a pyplot figure would be
shown twice: once as the cell's value, once by the inline backend). Nothing here calls
`plt.show`. Figures that show demo data carry a "synthetic demo data" stamp: pass
`synthetic=True`, or leave `None` where the input has a `synthetic` column. Every figure
function takes `caption=` (text under the figure naming dataset and split: build it with
`utils.captions.caption_text`).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from .captions import add_caption
from .fileio import atomic_path

__all__ = ["plot_history", "plot_roc_pr", "plot_confusion", "plot_reliability",
           "plot_threshold_sweep", "plot_metric_bars", "plot_seed_points",
           "plot_external_matrix", "plot_per_finding_auroc",
           "plot_class_balance", "plot_image_sizes", "image_grid", "plot_box_stats",
           "plot_cooccurrence", "plot_learning_curves", "save_figure", "SYNTHETIC_STAMP"]

SYNTHETIC_STAMP = "synthetic demo data"
_LABEL_NAMES = {0: "Normal", 1: "Pneumonia"}


def _figure(ncols: int = 1, size: tuple[float, float] = (6, 4), nrows: int = 1):
    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes.ravel()


def _finish(fig: Figure, synthetic: bool | None, caption: str | None = None) -> Figure:
    """Stamp demo figures and write the caption (`utils.captions`) under the figure."""
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


# --- training and evaluation -------------------------------------------------------------

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


def plot_roc_pr(curves: Mapping[str, tuple[Any, Any]], synthetic: bool = False,
                caption: str | None = None) -> Figure:
    """ROC and precision-recall curves of several models overlaid, AUROC / AP in the legend.

    Args:
        curves: name → (y_true 0/1, predicted probability).
    """
    from sklearn.metrics import (average_precision_score, precision_recall_curve,
                                 roc_auc_score, roc_curve)

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
    """Reliability diagram and bin counts from `utils.evaluate.calibration` (or name → it)."""
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


def plot_metric_bars(df: pd.DataFrame, metric: str, ci: bool = True, label: str | None = None,
                     hue: str | None = None, synthetic: bool | None = None,
                     caption: str | None = None) -> Figure:
    """One bar per model (a group per model when `hue` names a column), with 95% CIs.

    Args:
        df: one row per run: `<metric>`, and `<metric>_lo`/`<metric>_hi` when `ci`.
        label: the column naming the bars; default the first of name, model, step.
    Example:
        >>> plot_metric_bars(runs.assign(name=runs["step"]), "auroc")  # doctest: +SKIP
    """
    label = label or next((c for c in ("name", "model", "step") if c in df.columns), "name")
    bounds = [f"{metric}_lo", f"{metric}_hi"]
    _require(df, [metric, label] + ([hue] if hue else []) + (bounds if ci else []),
             "plot_metric_bars (ci=False draws no CIs)")
    keys = [label] + ([hue] if hue else [])
    if df.duplicated(keys).any():
        raise ValueError(f"several rows share {keys}: {df.loc[df.duplicated(keys), label].tolist()}"
                         "; pass hue= (e.g. 'dataset') or filter the table first")
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
    ax.set(xlabel=label, ylabel=metric, title=metric + (" with bootstrap 95% CI" if ci else ""))
    if values.min().min() >= 0 and values.max().max() <= 1:
        ax.set_ylim(0, 1.1)
    if hue:
        _legend(ax, title=hue)
    return _finish(fig, _auto_synthetic(df, synthetic), caption)


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


# --- data --------------------------------------------------------------------------------

def plot_class_balance(manifest: pd.DataFrame, synthetic: bool | None = None,
                       caption: str | None = None) -> Figure:
    """Images and patients per split and label: the imbalance and the images/patient ratio."""
    if manifest.empty:
        return _empty("no images in this source", synthetic, caption)
    _require(manifest, ["split", "label", "patient_id"], "plot_class_balance")
    df = manifest.assign(split=manifest["split"].replace("", "unsplit"),
                         label=manifest["label"].map(lambda v: _LABEL_NAMES.get(v, str(v))))
    fig, axes = _figure(2, (11, 4))
    for ax, (what, agg) in zip(axes, [("images", "size"), ("patients", "nunique")]):
        counts = df.groupby(["split", "label"])["patient_id"].agg(agg).unstack(fill_value=0)
        _bars(ax, counts)
        ax.set(xlabel="split", ylabel=what, title=f"{what} per split and label")
        _legend(ax, title="label")
    return _finish(fig, _auto_synthetic(manifest, synthetic), caption)


def plot_image_sizes(sizes_df: pd.DataFrame, synthetic: bool | None = None,
                     caption: str | None = None) -> Figure:
    """Width against height (by label when known) and the aspect-ratio histogram."""
    if sizes_df.empty:
        return _empty("no image sizes", synthetic, caption)
    _require(sizes_df, ["width", "height"], "plot_image_sizes")
    known = sizes_df[(sizes_df["width"] > 0) & (sizes_df["height"] > 0)]
    fig, (scatter, hist) = _figure(2, (10, 4))
    groups = known.groupby("label") if "label" in known.columns else [("all", known)]
    for lab, g in groups:
        scatter.scatter(g["width"], g["height"], s=12, alpha=0.6,
                        label=_LABEL_NAMES.get(lab, str(lab)))
        hist.hist(g["width"] / g["height"], bins=30, alpha=0.6, label=_LABEL_NAMES.get(lab, lab))
    note = f" ({len(sizes_df) - len(known)} of unknown size not shown)" \
        if len(known) < len(sizes_df) else ""
    scatter.set(xlabel="width (px)", ylabel="height (px)", title=f"image sizes, n={len(known)}"
                + note)
    hist.set(xlabel="aspect ratio (width / height)", ylabel="images", title="aspect ratio")
    _legend(scatter)
    _legend(hist)
    return _finish(fig, _auto_synthetic(sizes_df, synthetic), caption)


def image_grid(images: Sequence[Any], titles: Sequence[str] | None = None,
               boxes: Sequence[Any] | None = None, cams: Sequence[Any] | None = None,
               ncols: int = 4, synthetic: bool = False, suptitle: str | None = None,
               cam_alpha: float = 0.4, caption: str | None = None) -> Figure:
    """Grayscale images in a grid, with optional `[x, y, w, h]` boxes and CAM overlays.

    Args:
        images: `H×W` arrays (uint8 or float), or an `N×1×H×W` array/tensor.
        boxes: per image, a list of `[x, y, w, h]` in that image's pixels.
        cams: per image, an `h×w` map in [0, 1] (stretched over the image when smaller).
    Example:
        >>> image_grid(imgs, titles=names, boxes=boxes, cams=cams)  # doctest: +SKIP
    """
    images = [np.squeeze(np.asarray(im)) for im in images]
    if not images:
        return _empty("no images to show", synthetic, caption)
    for name, extra in (("titles", titles), ("boxes", boxes), ("cams", cams)):
        if extra is not None and len(extra) != len(images):
            raise ValueError(f"{len(extra)} {name} for {len(images)} images")
    ncols = min(ncols, len(images))
    nrows = math.ceil(len(images) / ncols)
    fig, axes = _figure(ncols, (2.8 * ncols, 2.9 * nrows + (0.3 if suptitle else 0)), nrows)
    for i, ax in enumerate(axes):
        ax.set_axis_off()
        if i >= len(images):
            continue
        img = images[i]
        h, w = img.shape[:2]
        ax.imshow(img, cmap="gray", **({"vmin": 0, "vmax": 255} if img.dtype == np.uint8 else {}))
        if cams is not None and cams[i] is not None:
            ax.imshow(np.asarray(cams[i], dtype=float), cmap="jet", alpha=cam_alpha, vmin=0,
                      vmax=1, extent=(-0.5, w - 0.5, h - 0.5, -0.5), interpolation="bilinear")
        for x, y, bw, bh in np.asarray(boxes[i] if boxes is not None else [],
                                       dtype=float).reshape(-1, 4):
            # pixel edges sit at -0.5 in imshow coordinates; boxes count from the edge
            ax.add_patch(Rectangle((x - 0.5, y - 0.5), bw, bh, fill=False, lw=1.5,
                                   edgecolor="lime"))
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    return _finish(fig, synthetic, caption)


def plot_box_stats(boxes_df: pd.DataFrame, synthetic: bool | None = None,
                   caption: str | None = None) -> Figure:
    """Box width against height, and where box centres fall (relative image position).

    Args:
        boxes_df: one row per box with `w`, `h`, and `cx`, `cy` in [0, 1] (as
            `utils.eda.box_table` makes), or `x`, `y` plus the image `width`, `height`.
    """
    if boxes_df.empty:
        return _empty("no boxes", synthetic, caption)
    df = boxes_df
    if "cx" not in df.columns:
        _require(df, ["x", "y", "w", "h", "width", "height"], "plot_box_stats")
        df = df.assign(cx=(df["x"] + df["w"] / 2) / df["width"],
                       cy=(df["y"] + df["h"] / 2) / df["height"])
    _require(df, ["w", "h", "cx", "cy"], "plot_box_stats")
    fig, (size, centre) = _figure(2, (10, 4.2))
    size.scatter(df["w"], df["h"], s=8, alpha=0.5)
    size.set(xlabel="box width (px)", ylabel="box height (px)", title=f"box sizes, n={len(df)}")
    counts, _, _ = np.histogram2d(df["cy"], df["cx"], bins=16, range=[[0, 1], [0, 1]])
    im = centre.imshow(counts, extent=(0, 1, 1, 0), cmap="magma", interpolation="nearest")
    fig.colorbar(im, ax=centre, label="boxes")
    centre.set(xlabel="centre x / image width", ylabel="centre y / image height",
               title="box centres (image orientation)")
    return _finish(fig, _auto_synthetic(boxes_df, synthetic), caption)


def plot_cooccurrence(labels_df: pd.DataFrame, names: Sequence[str],
                      synthetic: bool | None = None, caption: str | None = None) -> Figure:
    """How often two findings appear on the same image (NIH); diagonal counts in the labels."""
    import seaborn as sns

    if labels_df.empty:
        return _empty("no labelled images", synthetic, caption)
    _require(labels_df, list(names), "plot_cooccurrence")
    x = labels_df[list(names)].to_numpy(dtype=np.int64)
    counts = x.T @ x
    ticks = [f"{n} ({counts[i, i]})" for i, n in enumerate(names)]
    fig, (ax,) = _figure(size=(0.6 * len(names) + 4, 0.5 * len(names) + 2.5))
    sns.heatmap(counts, mask=np.eye(len(names), dtype=bool), annot=True, fmt="d", ax=ax,
                cmap="viridis", xticklabels=list(names), yticklabels=ticks,
                annot_kws={"fontsize": 7}, cbar_kws={"label": "images with both"})
    ax.set_title(f"finding co-occurrence, {len(x)} images (diagonal: images per finding)")
    return _finish(fig, _auto_synthetic(labels_df, synthetic), caption)


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write `fig` atomically (a crash never leaves half a PNG); format from the suffix."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if not fmt:
        raise ValueError(f"{path}: add a suffix (.png, .svg, .pdf) to choose the format")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight")
    return path
