"""Captions for the figures and tables the notebooks show: which data, which split.

A figure or table lifted out of a report (into slides, a chat, a paper draft) must still say
what it was measured on. Every figure function in `utils.plots` takes `caption=`; tables get
`captioned(df, text)`. Build the text with `caption_text` so they all read alike:

    >>> text = caption_text("kermany", "test", n=624, patients=234)  # doctest: +SKIP
    >>> plots.plot_confusion(cm, caption=text)                       # doctest: +SKIP
    >>> captioned(summaries.metrics_table(res), text)                # doctest: +SKIP

The figure caption is drawn in the figure, under it (so a saved PNG keeps it); the table
caption is an HTML `<caption>` (pandas Styler), which the step reports style.
"""
from __future__ import annotations

import textwrap
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

__all__ = ["caption_text", "manifest_caption", "add_caption", "captioned", "CAPTION_TAG"]

CAPTION_TAG = "cxr-caption"   # the gid of a figure's caption text (tests find it by this)
_SOURCES = {"kermany": "Kermany (Chest X-Ray Images, Pneumonia)", "rsna": "RSNA Pneumonia",
            "nih": "NIH ChestX-ray14"}


def caption_text(dataset: str, split: str | None = None, n: int | None = None,
                 patients: int | None = None, note: str = "", synthetic: bool = False) -> str:
    """`"RSNA Pneumonia · test split · n = 300 images, 240 patients · <note>"`.

    Args:
        dataset: a source name (`kermany`, `rsna`, `nih`) or any text ("all sources").
        split: `train`, `val`, `test`, `all` ... (None: not split-specific).
        n, patients: sizes, when known.
        synthetic: add "synthetic demo data" (the figures' stamp says it too).
    """
    parts = [_SOURCES.get(dataset, dataset)]
    if split:
        parts.append(f"{split} split" if split in ("train", "val", "test") else split)
    if n is not None:
        parts.append(f"n = {n} images" + (f", {patients} patients" if patients else ""))
    if note:
        parts.append(note)
    if synthetic:
        parts.append("synthetic demo data")
    return " · ".join(parts)


def manifest_caption(manifest: pd.DataFrame, dataset: str, split: str | None = None,
                     note: str = "") -> str:
    """`caption_text` with the image and patient counts of a source's manifest (or of one
    of its splits); an empty manifest says the source is absent."""
    if manifest.empty:
        return caption_text(dataset, note="not found under the data root")
    df = manifest if split in (None, "all") else manifest[manifest["split"] == split]
    synthetic = bool("synthetic" in df.columns and df["synthetic"].eq(True).any())
    return caption_text(dataset, split or "all splits", n=len(df),
                        patients=int(df["patient_id"].nunique()), note=note,
                        synthetic=synthetic)


def add_caption(fig: Figure, text: str | None, width_chars: int | None = None) -> Figure:
    """Write `text` under the figure, wrapped to its width; `None`/"" leaves it as it is.

    The text sits just below the figure's bottom edge: savefig(bbox_inches="tight"), which
    Jupyter's inline backend and `plots.save_figure` use, grows the image to hold it.
    """
    if not text:
        return fig
    width = width_chars or max(40, int(fig.get_figwidth() * 14))
    wrapped = "\n".join(textwrap.wrap(str(text), width))
    fig.text(0.01, -0.01, wrapped, ha="left", va="top", fontsize=9, color="#333333",
             style="italic", gid=CAPTION_TAG)
    return fig


def captioned(df: pd.DataFrame, text: str, precision: int = 3) -> Any:
    """The table with an HTML caption (a pandas `Styler`; displays like the DataFrame).

    Floats show `precision` decimals; `df` itself is not changed (use it for computing).
    """
    return df.style.set_caption(text).format(precision=precision, na_rep="–")
