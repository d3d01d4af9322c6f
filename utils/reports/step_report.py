"""A step's HTML report, written for readers rather than for the notebook's author.

`render_notebook_html(reports/<step>.ipynb, reports/<step>.html)` turns an executed notebook
into one self-contained page (output images inline as base64, no network assets) with the
nbconvert template `utils/reports/templates/cxr_report` (nbconvert's `lab`, extended):

- under the title: a few sentences written from the step's results JSON (`utils.reports.narrative`),
  a table of contents built from the rendered headings, a "show all code" switch, and links
  back to the index and to the notebook in Colab;
- every code cell folded into a closed `<details>` (one click shows it); outputs stay open;
- the `parameters` cell and papermill's `injected-parameters` cell as one small table
  (value, who set it, the notebook's comment), their code folded like the rest;
- the Colab badge (an external image) left out: the page loads nothing from the network.
"""
from __future__ import annotations

import ast
import html
import re
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_text
from ..hosted import colab_url, strip_badge
from .narrative import step_summary

__all__ = ["render_notebook_html", "parameter_rows", "parameters_table", "table_of_contents",
           "TEMPLATE_DIR"]

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
_TOC_MARK = "<!--cxr-toc-->"
_HEADING = re.compile(r'<h([23])\b[^>]*\bid="([^"]+)"[^>]*>(.*?)</h\1>', re.S)

CSS = """
.cxr-header{font-family:var(--jp-content-font-family,system-ui,sans-serif);
 margin:0 0 0 calc(var(--jp-cell-prompt-width,64px) + 22px);max-width:1100px}
.cxr-header a,.cxr-params a{color:#1a5fb4;text-decoration:underline}
.cxr-lead{font-size:1.05rem;line-height:1.5;background:#f4f8fb;border-left:4px solid #3a7bd5;
 padding:.6rem 1rem;margin:.8rem 0} .cxr-lead p{margin:.3rem 0}
.cxr-banner{background:#b00020;color:#fff;font-weight:700;padding:.5rem .8rem;border-radius:4px}
.cxr-toc{margin:.6rem 0 1rem} .cxr-toc ol{margin:.2rem 0 0 1.2rem;padding:0}
.cxr-toc ul{margin:0 0 0 1rem;padding:0;list-style:circle}
.cxr-controls{margin:.4rem 0 1rem;font-size:.9rem} .cxr-controls button{cursor:pointer}
details.cxr-code>summary{cursor:pointer;color:#666;font-size:.8rem;margin:.1rem 0 .2rem;
 font-family:var(--jp-code-font-family,monospace)}
table.cxr-params{border-collapse:collapse;font-size:.8rem;margin:.3rem 0 .5rem
 calc(var(--jp-cell-prompt-width,64px) + 22px);font-family:var(--jp-content-font-family)}
table.cxr-params td,table.cxr-params th{border-bottom:1px solid #eee;padding:.05rem .6rem;
 text-align:left} table.cxr-params code{white-space:nowrap}
table.cxr-params tr.injected td:nth-child(2){font-weight:700}
table.cxr-params caption{text-align:left;font-weight:600}
body .jp-RenderedHTMLCommon td,body .jp-RenderedHTMLCommon th{white-space:nowrap}
body .jp-RenderedHTMLCommon caption{caption-side:top;text-align:left;font-weight:600;
 padding:.2rem 0;color:#333;white-space:normal}
"""  # `body` outranks the lab theme's rules, which come after this block

SCRIPT = """
(function(){var b=document.getElementById('cxr-toggle-code');if(!b)return;
b.addEventListener('click',function(){var open=b.getAttribute('data-open')!=='1';
document.querySelectorAll('details.cxr-code').forEach(function(d){d.open=open;});
b.setAttribute('data-open',open?'1':'0');b.textContent=open?'Hide all code':'Show all code';});
})();
"""


def _assignments(source: str) -> list[tuple[str, str, str]]:
    """`(name, value source, trailing comment)` of each `name = value` line of a cell."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    lines = source.splitlines()
    rows = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                and isinstance(node.targets[0], ast.Name):
            value = ast.get_source_segment(source, node.value) or ""
            tail = lines[node.end_lineno - 1][node.end_col_offset:]
            comment = tail.split("#", 1)[1].strip() if "#" in tail else ""
            rows.append((node.targets[0].id, value, comment))
    return rows


def parameter_rows(cells: list[Any]) -> list[dict[str, str]]:
    """One row per parameter: the value in force, who set it, the notebook's comment."""
    defaults, injected = {}, {}
    for cell in cells:
        tags = cell.get("metadata", {}).get("tags", [])
        target = defaults if "parameters" in tags else injected if \
            "injected-parameters" in tags else None
        if target is not None and cell.get("cell_type") == "code":
            target.update({n: (v, c) for n, v, c in _assignments(cell.get("source", ""))})
    rows = []
    for name in [*defaults, *(n for n in injected if n not in defaults)]:
        value, set_by = (injected[name][0], "run_all.py") if name in injected \
            else (defaults[name][0], "notebook")
        rows.append({"name": name, "value": value, "set_by": set_by,
                     "comment": defaults.get(name, ("", ""))[1]})
    return rows


def parameters_table(rows: list[dict[str, str]]) -> str:
    """The parameters as a small HTML table (escaped)."""
    if not rows:
        return ""
    esc = html.escape
    body = "".join(f'<tr class="{"injected" if r["set_by"] == "run_all.py" else "default"}">'
                   f"<td><code>{esc(r['name'])}</code></td><td><code>{esc(r['value'])}"
                   f"</code></td><td>{esc(r['comment'])}</td></tr>" for r in rows)
    return ('<table class="cxr-params"><caption>Parameters of this run (bold: set by '
            "run_all.py, the others are the notebook's defaults)</caption><thead><tr>"
            "<th>parameter</th><th>value</th><th>meaning</th></tr></thead>"
            f"<tbody>{body}</tbody></table>")


def table_of_contents(body: str) -> str:
    """The page's h2 headings as a numbered list, each with its h3s nested under it,
    linking their nbconvert anchors."""
    items: list[tuple[str, str, list[str]]] = []
    for level, anchor, inner in _HEADING.findall(body):
        text = html.unescape(re.sub(r"<[^>]+>", "", inner)).replace("¶", "").strip()
        link = f'<a href="#{anchor}">{html.escape(text)}</a>'
        if not text:
            continue
        if level == "3" and items:
            items[-1][2].append(f"<li>{link}</li>")
        else:
            items.append((anchor, link, []))
    if not items:
        return ""
    lis = "".join(f"<li>{link}" + (f"<ul>{''.join(sub)}</ul>" if sub else "") + "</li>"
                  for _, link, sub in items)
    return f'<nav class="cxr-toc"><b>Contents</b><ol>{lis}</ol></nav>'


def _description(cell: Any) -> str:
    """The title cell's prose after its heading, as plain text (for steps without results)."""
    lines = [ln for ln in strip_badge(cell.source).splitlines()
             if ln.strip() and not ln.startswith(("#", "|"))]
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", " ".join(lines))  # [text](link) -> text
    return re.sub(r"`([^`]*)`|\*\*([^*]*)\*\*", lambda m: m.group(1) or m.group(2) or "", text)


def _first_error(nb: Any) -> str:
    """A failed run's first error, in words (its report keeps the outputs up to there)."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    for i, cell in enumerate(code, 1):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return (f"This run FAILED at code cell {i} of {len(code)} with "
                        f"{out.get('ename')}: {str(out.get('evalue', ''))[:300]}; the cells "
                        "before it ran and are shown below, the results may be older.")
    return ""


def _header(step: str, sentences: list[str], notebook_name: str, synthetic: bool) -> str:
    esc = html.escape
    banner = ('<div class="cxr-banner">SYNTHETIC DEMO DATA: not clinical results</div>'
              if synthetic else "")
    lead = "".join(f"<p>{esc(s)}</p>" for s in sentences)
    controls = ('<p class="cxr-controls"><button id="cxr-toggle-code" type="button">Show all '
                'code</button> · <a href="index.html">all reports</a> · <a href="'
                f'{esc(colab_url(notebook_name))}">open the notebook in Colab</a></p>')
    return (f'<div class="cxr-header" data-step="{esc(step)}">{banner}'
            f'<div class="cxr-lead">{lead}</div>{_TOC_MARK}{controls}</div>')


def render_notebook_html(ipynb: str | Path, target: str | Path,
                         results_dir: str | Path | None = None) -> Path:
    """Write the reader's report of an executed notebook atomically.

    Args:
        ipynb: `reports/<step>.ipynb` (papermill's output); the step is its stem.
        target: where the HTML goes.
        results_dir: the results JSON folder (default: `results/` beside `ipynb`).
    """
    import nbformat  # local: only run_all renders reports
    from nbconvert import HTMLExporter

    ipynb = Path(ipynb)
    nb = nbformat.read(ipynb, as_version=4)
    step = ipynb.stem
    results_dir = Path(results_dir) if results_dir else ipynb.parent / "results"
    title = next((c for c in nb.cells if c.cell_type == "markdown"), None)
    notebook_name = str((nb.metadata.get("papermill") or {}).get("input_path") or "")
    notebook_name = Path(notebook_name).name or f"{step}.ipynb"
    names = [p.stem for p in ipynb.parent.glob("*.ipynb") if not p.name.startswith(".")]
    sentences = step_summary(step, results_dir, _description(title) if title else "", names)
    if failure := _first_error(nb):
        sentences.insert(0, failure)
    synthetic = any("synthetic demo data" in s for s in sentences) or \
        "SYNTHETIC DEMO DATA" in str([o.get("text", "") for c in nb.cells[:6]
                                      for o in c.get("outputs", [])])
    if title is not None:
        title.source = strip_badge(title.source)
        title.metadata["cxr_header"] = True
        heading = next((ln.lstrip("# ") for ln in title.source.splitlines()
                        if ln.startswith("#")), step)
        nb.metadata["title"] = f"{heading} — {step}"
    resources = {"cxr": {"css": CSS, "script": SCRIPT,
                         "params_table": parameters_table(parameter_rows(nb.cells)),
                         "header": _header(step, sentences, notebook_name, synthetic)}}
    exporter = HTMLExporter(template_name="cxr_report",
                            extra_template_basedirs=[str(TEMPLATE_DIR)])
    body, _ = exporter.from_notebook_node(nb, resources=resources)
    body = body.replace(_TOC_MARK, table_of_contents(body), 1)
    return atomic_write_text(target, body)
