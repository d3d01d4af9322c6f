"""The data: class balance, image sizes, image grids with boxes, box statistics,
finding co-occurrence."""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .base import (_LABEL_NAMES, _auto_synthetic, _bars, _empty, _figure, _finish, _legend,
                   _require)


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
            `utils.study.eda.box_table` makes), or `x`, `y` plus the image `width`, `height`.
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
