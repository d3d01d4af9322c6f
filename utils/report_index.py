"""The `reports/` folder run_all.py keeps: index.html, each step's HTML, the run state file
with the fingerprints that decide which steps are unchanged.

`index.html` is one self-contained page linking every step's report with its numbers;
`run_all.py` rewrites it after every step, so a reader can open it while a long run is going.
Headline numbers come from `reports/results/<step>.json`, read defensively: a step without a
results file (EDA, comparison...) or with a missing key shows a blank cell, never a crash.
No external assets: inline CSS only, so the page works offline and when mailed as a file.
"""
from __future__ import annotations

import hashlib
import html
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .fileio import atomic_write_json, atomic_write_text

__all__ = ["StepRow", "METRICS", "read_results_summary", "render_index", "write_index",
           "build_rows", "summary_table", "render_notebook_html", "load_state", "save_state",
           "code_digest", "data_facts", "fingerprint", "upstream_facts"]
log = logging.getLogger(__name__)

# (column title, key under "test" in the results JSON); sensitivity is the recall
METRICS: tuple[tuple[str, str], ...] = (
    ("AUROC", "auroc"), ("F1", "f1"), ("accuracy", "accuracy"),
    ("sensitivity", "recall"), ("specificity", "specificity"))


@dataclass
class StepRow:
    """One line of the index: what happened to a step and what its results file says."""

    name: str
    status: str          # ok | failed | skipped-unchanged | blocked | running | not run
    duration_s: float | None = None
    report: str | None = None        # href of <step>.html relative to the index, if it exists
    error: str = ""
    note: str = ""
    results: dict[str, Any] = field(default_factory=dict)


def _get(obj: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def read_results_summary(path: str | Path) -> dict[str, Any]:
    """The index's fields of one results JSON; missing file or key -> None.

    A file that exists but cannot be parsed is reported in `problem` (shown in the row),
    because a silently blank row would hide a broken run.
    Example:
        >>> read_results_summary("reports/results/05_vit.json")["auroc"]  # doctest: +SKIP
        0.93
    """
    path = Path(path)
    summary: dict[str, Any] = {"dataset": None, "synthetic": None, "model": None,
                               "problem": ""}
    summary.update({key: None for _, key in METRICS})
    if not path.exists():
        return summary
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        summary["problem"] = f"unreadable results file {path.name}: {exc}"
        return summary
    summary["dataset"] = _get(data, "data", "dataset")
    summary["synthetic"] = _get(data, "data", "synthetic")
    summary["model"] = _get(data, "model", "name")
    for _, key in METRICS:
        value = _get(data, "test", key)
        summary[key] = value if isinstance(value, (int, float)) else None
    return summary


def _fmt_metric(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) and value is not True else ""


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes, sec = divmod(int(round(seconds)), 60)
    return f"{minutes}m {sec:02d}s" if minutes else f"{seconds:.1f}s"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#222}
h1{margin-bottom:.2rem} .meta{color:#555;margin-bottom:1rem}
.banner{background:#b00020;color:#fff;font-weight:700;font-size:1.3rem;padding:.8rem 1rem;
 border-radius:6px;margin:1rem 0}
table{border-collapse:collapse;width:100%;font-size:.92rem}
th,td{border-bottom:1px solid #ddd;padding:.35rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f3f3} td.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#1b7f3b;font-weight:600} .failed,.blocked{color:#b00020;font-weight:600}
.skipped-unchanged{color:#555} .not-run,.running{color:#999}
.badge{background:#fde2e4;color:#b00020;border-radius:4px;padding:0 .3rem;font-size:.8rem;
 white-space:nowrap} .err{color:#b00020;font-family:monospace;font-size:.85rem}
.note{color:#777;font-size:.85rem}
"""


def _row_html(row: StepRow) -> str:
    res = row.results
    esc = html.escape
    name = (f'<a href="{esc(row.report)}">{esc(row.name)}</a>' if row.report
            else esc(row.name))
    badge = ' <span class="badge">synthetic demo data</span>' if res.get("synthetic") else ""
    css = row.status.replace(" ", "-")
    details = [f'<div class="err">{esc(row.error)}</div>' if row.error else "",
               f'<div class="err">{esc(res["problem"])}</div>' if res.get("problem") else "",
               f'<div class="note">{esc(row.note)}</div>' if row.note else ""]
    cells = [f"<td>{name}{badge}</td>", f'<td class="{esc(css)}">{esc(row.status)}</td>',
             f'<td class="num">{_fmt_duration(row.duration_s)}</td>',
             f"<td>{esc(str(res.get('dataset') or ''))}</td>",
             f"<td>{esc(str(res.get('model') or ''))}</td>"]
    cells += [f'<td class="num">{_fmt_metric(res.get(key))}</td>' for _, key in METRICS]
    cells.append(f"<td>{''.join(details)}</td>")
    return "<tr>" + "".join(cells) + "</tr>"


def render_index(rows: list[StepRow], *, run_date: str, profile: str, data_root: str,
                 synthetic: bool, title: str = "cxr-pneumonia — run report") -> str:
    """The whole index page as a string (pure: no file access, easy to test).

    Args:
        rows: one `StepRow` per plan step, in plan order.
        run_date, profile, data_root: shown under the title.
        synthetic: the run used the generated demo set -> a prominent banner. A row whose
            results say `data.synthetic` gets its own badge either way.
    """
    esc = html.escape
    synthetic = synthetic or any(r.results.get("synthetic") for r in rows)
    banner = ('<div class="banner">SYNTHETIC DEMO DATA — not clinical results</div>'
              if synthetic else "")
    head = ["step", "status", "duration", "dataset", "model",
            *[title_ for title_, _ in METRICS], "details"]
    table = ("<table><thead><tr>" + "".join(f"<th>{h}</th>" for h in head)
             + "</tr></thead><tbody>\n" + "\n".join(_row_html(r) for r in rows)
             + "\n</tbody></table>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>\n"
            f"<h1>{esc(title)}</h1>\n<div class=\"meta\">run {esc(run_date)} · profile "
            f"<b>{esc(profile)}</b> · data root <code>{esc(data_root)}</code></div>\n"
            f"{banner}\n{table}\n<p class=\"note\">Metrics are on the test split at the "
            f"threshold chosen on validation; sensitivity = recall. Generated by "
            f"run_all.py.</p>\n</body></html>\n")


def write_index(path: str | Path, rows: list[StepRow], **meta: Any) -> Path:
    """Render and write the index atomically (a reader never sees half a page)."""
    return atomic_write_text(path, render_index(rows, **meta))


def build_rows(names: list[str], outcomes: dict[str, dict], state: dict[str, dict],
               reports: Path) -> list[StepRow]:
    """One row per plan step: this run's outcome, else "not run" with the last run's status."""
    rows = []
    for name in names:
        out, prev = outcomes.get(name), state.get(name, {})
        note = f"last run: {prev.get('status')} {prev.get('finished', '')}" if prev else ""
        if out:
            note = (f"report from {prev.get('finished', 'an earlier run')}"
                    if out["status"] == "skipped-unchanged" else "")
        page = reports / f"{name}.html"
        rows.append(StepRow(name, out["status"] if out else "not run",
                            (out or {}).get("duration_s"), page.name if page.exists() else None,
                            (out or {}).get("error", ""), note,
                            read_results_summary(reports / "results" / f"{name}.json")))
    return rows


def summary_table(rows: list[StepRow]) -> str:
    """The plain-text table printed at the end of a run."""
    lines = [f"{'step':<40} {'status':<18} {'time':>8}  {'AUROC':>6}  error"]
    for row in rows:
        auroc = row.results.get("auroc")
        lines.append(f"{row.name:<40} {row.status:<18} {_fmt_duration(row.duration_s):>8}  "
                     f"{_fmt_metric(auroc):>6}  {row.error[:80]}")
    return "\n".join(lines)


def render_notebook_html(ipynb: str | Path, target: str | Path) -> Path:
    """A step's report: self-contained HTML (output images inline base64), written atomically."""
    import nbformat  # local: only run_all renders reports
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nbformat.read(ipynb, 4))
    return atomic_write_text(target, body)


def load_state(path: str | Path) -> dict[str, dict]:
    """Per-step state of earlier runs; an unreadable file is a lost cache: warn, re-run all."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        steps = json.loads(path.read_text(encoding="utf-8"))["steps"]
        if not isinstance(steps, dict):
            raise ValueError("'steps' is not an object")
        return steps
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable %s (%s): every step will run", path, exc)
        return {}


def save_state(path: str | Path, steps: dict[str, dict]) -> Path:
    return atomic_write_json(path, {"version": 1, "steps": steps})


# --- fingerprints: a step is skipped when its fingerprint equals its last successful run's --
PATH_PARAMS = ("reports_dir", "checkpoint_dir")   # where outputs go does not change them


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def code_digest(code_dir: str | Path) -> str:
    """One hash of every `*.py` under `code_dir` (path and bytes): a library change re-runs."""
    code_dir = Path(code_dir)
    h = hashlib.sha256()
    for path in sorted(code_dir.rglob("*.py")):
        h.update(path.relative_to(code_dir).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def upstream_facts(after: tuple[str, ...], state: dict[str, dict],
                   reports: Path) -> dict[str, list]:
    """What the steps a step reads left behind: state fingerprint, status, results hash."""
    facts = {}
    for name in after:
        res, entry = reports / "results" / f"{name}.json", state.get(name, {})
        facts[name] = [entry.get("fingerprint"), entry.get("status"),
                       _sha(res.read_bytes()) if res.exists() else None]
    return facts


def data_facts(root: str | Path) -> list:
    """What the data root holds, cheaply: every source `find_sources` sees, and the files
    directly in it and in the root (name, size, mtime), i.e. the label CSVs and RSNA's NIH
    mapping. Adding a dataset, the mapping, or the full NIH labels where the sample was
    changes it; image folders are not walked (tens of thousands of files), and folders a
    run writes into the data root (DICOM→PNG) are not files, so they do not count.
    """
    from .data.discover import find_sources

    root = Path(root)
    facts = []
    for name, folder in [*sorted(find_sources(root).items()), ("root", root)]:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        files = [[e.name, e.stat().st_size, e.stat().st_mtime_ns] for e in entries
                 if e.is_file()]
        facts.append([name, str(folder), files])
    from .data.overlap import find_rsna_nih_mapping  # may sit in a folder of its own

    mapping = find_rsna_nih_mapping(root)
    if mapping is not None:
        st = mapping.stat()
        facts.append(["rsna_nih_mapping", str(mapping), [[mapping.name, st.st_size,
                                                          st.st_mtime_ns]]])
    return facts


def fingerprint(notebook: Path, params: dict[str, Any], code: str,
                upstream: dict[str, list], data: list | None = None) -> str:
    """sha256 of the notebook's bytes, its parameters (minus output folders; `data_root`
    kept), the code digest, `upstream_facts` and `data_facts` (when given).

    Example:
        >>> fp = fingerprint(Path("notebooks/05_vit.ipynb"), {"epochs": 2},
        ...                  code_digest("utils"), {})  # doctest: +SKIP
    """
    kept = {k: v for k, v in params.items() if k not in PATH_PARAMS}
    if "pretrained" in kept:  # -p pretrained=imagenet is -p pretrained=true (utils.weights)
        from .weights import canonical_pretrained

        try:
            kept["pretrained"] = canonical_pretrained(kept["pretrained"])
        except ValueError:
            pass  # make_config reports it
    parts = [_sha(Path(notebook).read_bytes()), json.dumps(kept, sort_keys=True, default=str),
             code, json.dumps(upstream, sort_keys=True)]
    if data is not None:
        parts.append(json.dumps(data, sort_keys=True, default=str))
    return _sha("\n".join(parts).encode())
