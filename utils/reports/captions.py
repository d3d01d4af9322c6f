"""Captions for the figures and tables the notebooks show: which data, which split.

A figure or table lifted out of a report (into slides, a chat, a paper draft) must still say
what it was measured on. Every figure function in `utils.reports.plots` takes `caption=`; tables get
`captioned(df, text)`. Build the text with `caption_text` so they all read alike:

    >>> text = caption_text("kermany", "test", n=624, patients=234)  # doctest: +SKIP
    >>> plots.plot_confusion(cm, caption=text)                       # doctest: +SKIP
    >>> captioned(summaries.metrics_table(res), text)                # doctest: +SKIP

The figure caption is drawn in the figure, under it (so a saved PNG keeps it); the table
caption is an HTML `<caption>` (pandas Styler), which the step reports style. Inside a
Jupyter kernel a displayed figure also carries its caption (or, without one, its title) as
the image's alternative text (`figure_alt_text`), which the step reports put in `<img alt>`.
"""
from __future__ import annotations

import sys
import textwrap
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

__all__ = ["caption_text", "manifest_caption", "add_caption", "captioned", "CAPTION_TAG",
           "figure_alt_text", "register_alt_text"]

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
    # only at spaces (not "ChestX-|ray14"), so the lines joined by spaces are the caption
    # again: the figure's alt text (figure_alt_text)
    wrapped = "\n".join(textwrap.wrap(str(text), width, break_on_hyphens=False,
                                       break_long_words=False))
    fig.text(0.01, -0.01, wrapped, ha="left", va="top", fontsize=9, color="#333333",
             style="italic", gid=CAPTION_TAG)
    return fig


def captioned(df: pd.DataFrame, text: str, precision: int = 3) -> Any:
    """The table with an HTML caption (a pandas `Styler`; displays like the DataFrame).

    Floats show `precision` decimals; `df` itself is not changed (use it for computing).
    """
    return df.style.set_caption(text).format(precision=precision, na_rep="–")


def figure_alt_text(fig: Figure) -> str:
    """What a figure shows, in one line: its caption; without one, its title (the suptitle,
    else the axes' titles); failing both, its axis labels."""
    caption = [t.get_text() for t in fig.texts if t.get_gid() == CAPTION_TAG]
    titles = [fig.get_suptitle()] + [ax.get_title() for ax in fig.axes]
    labels = [f"{ax.get_ylabel()} against {ax.get_xlabel()}" for ax in fig.axes
              if ax.get_xlabel() and ax.get_ylabel()]
    for parts in (caption, titles, labels):
        if text := "; ".join(" ".join(p.split()) for p in parts if p.strip()):
            return text  # a wrapped caption's line breaks become spaces
    return "figure without caption or title"


def _alt_bundle(fig: Figure) -> tuple[dict, dict]:
    """No data of its own (the inline backend's PNG formatter draws the figure), only the
    metadata that nbconvert-based reports read as the `<img>`'s alt text."""
    return {}, {"image/png": {"alt": figure_alt_text(fig)}}


def register_alt_text(formatter: Any = None) -> bool:
    """Make every Figure displayed in this IPython kernel carry `figure_alt_text` as its
    image's alt metadata; True when registered. A no-op outside IPython (scripts, tests).

    A mime-bundle printer for `Figure` adds metadata beside whatever PNG formatter draws the
    figure, so `%matplotlib inline` (which re-registers the PNG formatter, e.g. in
    `utils.study.notebook.setup`) may run before or after this. `formatter`: an IPython
    `DisplayFormatter` (default: the running shell's).
    """
    if formatter is None:
        if "IPython" not in sys.modules:  # not in a kernel: nothing to register with
            return False
        from IPython import get_ipython

        shell = get_ipython()
        if shell is None:
            return False
        formatter = shell.display_formatter
    formatter.mimebundle_formatter.for_type(Figure, _alt_bundle)
    return True


register_alt_text()  # every figure module imports this one: figures in a kernel get alt text
