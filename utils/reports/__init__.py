"""Reports: figures (`plots`), captions, results in words, a step's HTML report, the front
page (`reports/index.html`) and the bundle to share.

The public names below are imported lazily (PEP 562): importing the package costs nothing
until a name is used.
"""
from __future__ import annotations

from ..lazy import lazy_exports

_LAZY = {
    "caption_text": "captions",
    "captioned": "captions",
    "manifest_caption": "captions",
    "render_notebook_html": "step_report",
    "write_index": "index",
    "write_bundle": "bundle",
    "metrics_table": "summaries",
    "per_finding_table": "summaries",
}
__all__ = list(_LAZY)

__getattr__ = lazy_exports(__name__, _LAZY)
