"""Small HTML building blocks for the self-contained pages run_all writes (index, bundle).

No external assets: inline CSS, a few lines of inline JavaScript (sortable tables), inline
SVG for plots, so a page works offline, inside a zip and when mailed as one file.
"""
from __future__ import annotations

import html
from typing import Any, Sequence

__all__ = ["esc", "fmt_metric", "fmt_duration", "fmt_bytes", "table", "forest_svg",
           "CSS", "SORT_JS"]

esc = html.escape

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#222;
 max-width:1300px} h1{margin-bottom:.2rem} h2{margin-top:2rem;border-bottom:1px solid #ddd}
.meta{color:#555;margin-bottom:1rem} a{color:#1a5fb4}
.banner{background:#b00020;color:#fff;font-weight:700;font-size:1.3rem;padding:.8rem 1rem;
 border-radius:6px;margin:1rem 0}
table{border-collapse:collapse;width:100%;font-size:.92rem;margin:.4rem 0 1rem}
caption{caption-side:top;text-align:left;font-weight:600;padding:.3rem 0}
th,td{border-bottom:1px solid #ddd;padding:.35rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f3f3} table.sortable th{cursor:pointer;user-select:none;white-space:nowrap}
table.kv{width:auto;min-width:40%}
td.ok,td.failed,td.skipped-unchanged,td.not-run,td.running,td.interrupted,td.merged{white-space:nowrap}
table.sortable th::after{content:" \\2195";color:#aaa;font-size:.8em}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.ok{color:#1b7f3b;font-weight:600} .failed{color:#b00020;font-weight:600} .interrupted{color:#a15c00;font-weight:600}
.skipped-unchanged{color:#555} .merged{color:#1b5e8f;font-weight:600} .not-run,.running{color:#999}
.badge{background:#fde2e4;color:#b00020;border-radius:4px;padding:0 .3rem;font-size:.8rem;
 white-space:nowrap} .err{color:#b00020;font-family:monospace;font-size:.85rem;
 white-space:pre-wrap} .note{color:#777;font-size:.85rem}
.lead{font-size:1.05rem;background:#f4f8fb;border-left:4px solid #3a7bd5;padding:.5rem 1rem}
.grid{display:flex;flex-wrap:wrap;gap:1.5rem;align-items:flex-start} .grid>div{flex:1 1 520px}
svg text{font-family:system-ui,sans-serif;font-size:11px}
"""

# click a header to sort by that column (numbers by value, text alphabetically; again: reverse)
SORT_JS = """
(function(){function key(td){var v=td.getAttribute('data-v');if(v===null)v=td.textContent.trim();
var n=parseFloat(v);return isNaN(n)?[1,v.toLowerCase()]:[0,n];}
document.querySelectorAll('table.sortable').forEach(function(t){
t.querySelectorAll('thead th').forEach(function(th,i){th.addEventListener('click',function(){
var dir=th.getAttribute('data-dir')==='asc'?-1:1,body=t.tBodies[0];
var rows=Array.prototype.slice.call(body.rows);rows.sort(function(a,b){var x=key(a.cells[i]),
y=key(b.cells[i]);if(x[0]!==y[0])return x[0]-y[0];return (x[1]<y[1]?-1:x[1]>y[1]?1:0)*dir;});
rows.forEach(function(r){body.appendChild(r);});
t.querySelectorAll('thead th').forEach(function(h){h.removeAttribute('data-dir');});
th.setAttribute('data-dir',dir===1?'asc':'desc');});});});})();
"""


def fmt_metric(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) and value is not True \
        and value == value else ""


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes, sec = divmod(int(round(seconds)), 60)
    return f"{minutes}m {sec:02d}s" if minutes else f"{seconds:.1f}s"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return ""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def table(head: Sequence[str], rows: Sequence[Sequence[str]], caption: str = "",
          sortable: bool = True, cls: str = "") -> str:
    """An HTML table from pre-rendered `<td>` strings (callers escape their text)."""
    classes = " ".join(filter(None, ["sortable" if sortable else "", cls]))
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    body = "\n".join("<tr>" + "".join(r) + "</tr>" for r in rows)
    thead = ("<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead>"
             if any(head) else "")
    return f'<table class="{classes}">{cap}{thead}<tbody>\n{body}\n</tbody></table>'



def forest_svg(items: Sequence[tuple[str, float, float | None, float | None]],
               label: str = "test AUROC with 95% CI") -> str:
    """A dot-and-whisker plot (label, value, lo, hi), best first, as inline SVG."""
    items = [i for i in items if isinstance(i[1], (int, float))]
    if not items:
        return ""
    lows = [v if lo is None else lo for _, v, lo, _ in items]
    x0 = max(0.0, min(0.5, min(lows) - 0.05))
    left, width, row = 190, 330, 22
    height = row * len(items) + 44

    def x(v: float) -> float:
        return left + (v - x0) / (1.0 - x0) * width

    parts = [f'<svg role="img" aria-label="{esc(label)}" width="{left + width + 60}" '
             f'height="{height}" viewBox="0 0 {left + width + 60} {height}">']
    for tick in [t / 10 for t in range(11) if t / 10 >= x0 - 1e-9]:
        parts.append(f'<line x1="{x(tick):.1f}" x2="{x(tick):.1f}" y1="8" y2="{height - 30}" '
                     f'stroke="#e5e5e5"/><text x="{x(tick):.1f}" y="{height - 16}" '
                     f'text-anchor="middle">{tick:.1f}</text>')
    if x0 <= 0.5:
        parts.append(f'<line x1="{x(0.5):.1f}" x2="{x(0.5):.1f}" y1="8" y2="{height - 30}" '
                     'stroke="#999" stroke-dasharray="4 3"/>')
    for i, (name, v, lo, hi) in enumerate(items):
        y = 20 + i * row
        parts.append(f'<text x="{left - 8}" y="{y + 4}" text-anchor="end">{esc(name)}</text>')
        if lo is not None and hi is not None:
            parts.append(f'<line x1="{x(lo):.1f}" x2="{x(hi):.1f}" y1="{y}" y2="{y}" '
                         'stroke="#3a7bd5" stroke-width="2"/>')
        parts.append(f'<circle cx="{x(v):.1f}" cy="{y}" r="4.5" fill="#1a5fb4"/>'
                     f'<text x="{x(hi if hi is not None else v) + 6:.1f}" y="{y + 4}">'
                     f'{v:.3f}</text>')
    parts.append(f'<text x="{left + width / 2}" y="{height - 2}" text-anchor="middle">'
                 f'{esc(label)}</text></svg>')
    return "".join(parts)
