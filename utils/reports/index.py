"""run_all.py's front page, `reports/index.html`: the headline comparison, then the steps.

The page leads with the headline comparison (`utils.reports.headline`: per dataset and test set,
AUROC with CIs, a plot), then one row per plan step (status, time, link to its report,
headline metrics, the disk its checkpoints use, the error of a failed step), the run's
settings, package versions and the data it ran on. `run_all.py` rewrites it after every
step, so a reader can open it while a long run is going. Numbers come from
`reports/results/*.json`, read defensively: a missing file or key is a blank cell, an
unreadable file a visible problem, never a crash. Tables sort on a header click. No external
assets: inline CSS, JS and SVG only (`utils.reports.html_page`), so it works offline and in a zip.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

from ..evaluation.results import parse_run_name, primary_results
from ..fileio import atomic_write_text, read_json
from .headline import comparison_answer, headline_rows, render_headline
from .html_page import CSS, SORT_JS, esc, fmt_bytes, fmt_duration, fmt_metric, table
from .narrative import owner_step

__all__ = ["MERGED", "merged_table", "StepRow", "METRICS", "read_results_summary", "render_index", "write_index",
           "build_rows", "summary_table", "step_disk_bytes", "package_versions", "PACKAGES"]

# (column title, key under "test" in the results JSON); sensitivity is the recall
METRICS: tuple[tuple[str, str], ...] = (
    ("AUROC", "auroc"), ("F1", "f1"), ("accuracy", "accuracy"),
    ("sensitivity", "recall"), ("specificity", "specificity"))
PACKAGES = ("torch", "torchvision", "timm", "efficientnet-pytorch", "grad-cam",
            "albumentations", "numpy", "pandas", "scikit-learn", "pydicom", "papermill",
            "nbconvert")


@dataclass
class StepRow:
    """One line of the index: what happened to a step and what its results file says."""

    name: str
    status: str          # ok | failed | interrupted | skipped-unchanged | running | merged | not run
    duration_s: float | None = None
    report: str | None = None        # href of <step>.html relative to the index, if it exists
    error: str = ""
    note: str = ""
    results: dict[str, Any] = field(default_factory=dict)
    disk_bytes: int | None = None    # checkpoints of the step's runs; None: none on disk
    planned_s: float | None = None   # the cost plan's seconds on this device (run state)


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


def _row_html(row: StepRow, planned: bool = True) -> list[str]:
    res = row.results
    name = (f'<a href="{esc(row.report)}">{esc(row.name)}</a>' if row.report
            else esc(row.name))
    badge = ' <span class="badge">synthetic demo data</span>' if res.get("synthetic") else ""
    css = row.status.replace(" ", "-")
    details = [f'<div class="err">{esc(row.error)}</div>' if row.error else "",
               f'<div class="err">{esc(res["problem"])}</div>' if res.get("problem") else "",
               f'<div class="note">{esc(row.note)}</div>' if row.note else ""]
    cells = [f"<td>{name}{badge}</td>", f'<td class="{esc(css)}">{esc(row.status)}</td>',
             f'<td class="num" data-v="{row.duration_s if row.duration_s is not None else ""}">'
             f"{fmt_duration(row.duration_s)}</td>",
             *([f'<td class="num" data-v="{row.planned_s if row.planned_s is not None else ""}">'
                f"{fmt_duration(row.planned_s)}</td>"] if planned else []),
             f"<td>{esc(str(res.get('dataset') or ''))}</td>",
             f"<td>{esc(str(res.get('model') or ''))}</td>"]
    cells += [f'<td class="num">{fmt_metric(res.get(key))}</td>' for _, key in METRICS]
    cells.append(f'<td class="num" data-v="{row.disk_bytes if row.disk_bytes else ""}">'
                 f"{fmt_bytes(row.disk_bytes)}</td>")
    cells.append(f"<td>{''.join(details)}</td>")
    return cells


def _kv_table(items: Mapping[str, Any], caption: str) -> str:
    rows = [[f"<td>{esc(str(k))}</td>", f"<td><code>{esc(str(v))}</code></td>"]
            for k, v in items.items()]
    return table(["", ""], rows, caption=caption, sortable=False, cls="kv") if rows else ""


def render_index(rows: list[StepRow], *, run_date: str, profile: str, data_root: str,
                 synthetic: bool, title: str = "cxr-pneumonia — run report",
                 headline: str = "", settings: Mapping[str, Any] | None = None,
                 versions: Mapping[str, str] | None = None,
                 data: Mapping[str, Any] | None = None,
                 merged: Mapping[str, str] | None = None) -> str:
    """The whole index page as a string (pure: no file access, easy to test).

    Args:
        rows: one `StepRow` per plan step, in plan order.
        run_date, profile, data_root: shown under the title.
        synthetic: the run used the generated demo set -> a prominent banner. A row whose
            results say `data.synthetic` gets its own badge either way.
        headline: the headline section's HTML (`utils.reports.headline.render_headline`).
        settings, versions, data: label -> value tables at the end of the page.
        merged: bundle or folder -> the runs `run_all.py --merge` brought from it.
    """
    synthetic = synthetic or any(r.results.get("synthetic") for r in rows)
    banner = ('<div class="banner">SYNTHETIC DEMO DATA — not clinical results</div>'
              if synthetic else "")
    planned = any(r.planned_s is not None for r in rows)  # none: a CPU --plan never measured
    head = ["step", "status", "duration", *(["planned"] if planned else []), "dataset", "model",
            *[title_ for title_, _ in METRICS], "disk", "details"]
    steps = table(head, [_row_html(r, planned) for r in rows],
                  caption="Each step's first run, on its own dataset's test split")
    extra = "".join([
        f'<h2 id="settings">Run settings</h2>{_kv_table(settings or {}, "run_all.py")}',
        f'<h2 id="versions">Package versions</h2>{_kv_table(versions or {}, "installed")}',
        f'<h2 id="data">Data</h2>{_kv_table(data or {}, "what the data root holds")}',
        '<h2 id="merged">Merged runs</h2>' + _kv_table(
            merged, "run_all.py --merge: source → runs (reports/merged.json)") if merged else ""])
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>\n"
            f"<h1>{esc(title)}</h1>\n<div class=\"meta\">run {esc(run_date)} · profile "
            f"<b>{esc(profile)}</b> · data root <code>{esc(data_root)}</code></div>\n"
            f"{banner}\n{headline}\n<h2 id=\"steps\">Steps</h2>\n{steps}\n"
            f"<p class=\"note\">Metrics are on the test split at the threshold chosen on "
            f"validation; sensitivity = recall; disk = the step's checkpoints"
            + ("; planned = the cost plan's estimate on this machine's device (<code>run_all.py "
               "--plan</code>), every epoch counted" if planned else "") + ". Click a column "
            f"header to sort.</p>\n{extra}\n<p class=\"note\">Generated by run_all.py."
            f"</p>\n<script>{SORT_JS}</script>\n</body></html>\n")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed versions from package metadata (importing torch only to ask would cost
    seconds every time the index is written)."""
    import platform

    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def _data_table(data_root: str, reports: Path) -> dict[str, str]:
    """Sources found under the data root, and each run's dataset and test set size."""
    from ..data.discover import find_sources

    facts = {f"source {k}": str(v) for k, v in find_sources(data_root).items()}
    for path in sorted((reports / "results").glob("*.json")):
        try:
            res = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        data = res.get("data") if isinstance(res, dict) else None
        if isinstance(data, dict) and data.get("sizes"):
            sizes = ", ".join(f"{k} {v}" for k, v in data["sizes"].items())
            facts[f"run {res.get('step', path.stem)}"] = (
                f"{data.get('dataset')} ({data.get('task', '')}): {sizes} images; test set "
                f"{data.get('test_fingerprint') or '?'}")
    return facts


def write_index(path: str | Path, rows: list[StepRow], *,
                settings: Mapping[str, Any] | None = None, **meta: Any) -> Path:
    """Render and write the index atomically (a reader never sees half a page); the
    headline, versions and data facts are read from the reports folder beside it."""
    reports = Path(path).parent
    existing = {p.name for p in reports.glob("*.html")}
    headline = render_headline(*headline_rows(reports), existing=existing,
                               answer=comparison_answer(reports))
    try:
        data = _data_table(str(meta.get("data_root", "")), reports)
    except Exception as exc:  # noqa: BLE001 - facts are a courtesy; the page must render
        data = {"error": f"{type(exc).__name__}: {exc}"}

    page = render_index(rows, headline=headline, settings=settings,
                        versions=package_versions(), data=data, merged=merged_table(reports),
                        **meta)
    return atomic_write_text(path, page)


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def step_disk_bytes(checkpoints: str | Path, step: str, names: list[str]) -> int | None:
    """Bytes under `checkpoints/<run>/` for every run of `step` (`02_chexnet_nih` counts for
    `02_chexnet`, `05_vit.kermany.s1` for `05_vit`); None when it has none on disk."""
    from ..evaluation.results import parse_run_name

    try:
        folders = [f for f in os.scandir(checkpoints) if f.is_dir()]
    except OSError:
        return None
    mine = [Path(f.path) for f in folders
            if owner_step(parse_run_name(f.name)[0], names) == step]
    return sum(_folder_bytes(f) for f in mine) if mine else None


def build_rows(names: list[str], outcomes: dict[str, dict], state: dict[str, dict],
               reports: Path, checkpoints: Path | None = None) -> list[StepRow]:
    """One row per plan step: this run's outcome, else "merged" (another member's runs or
    report, `run_all.py --merge`), else "not run" with the last run's status."""
    rows = []
    merged = merged_steps(reports)
    for name in names:
        out, prev = outcomes.get(name), state.get(name, {})
        note = f"last run: {prev.get('status')} {prev.get('finished', '')}" if prev else ""
        if not out and not prev and name in merged:
            out = {"status": "merged", "note": f"merged from {merged[name]}"}
        if out:
            note = (f"report from {prev.get('finished', 'an earlier run')}"
                    if out["status"] == "skipped-unchanged" else out.get("note", ""))
        page = reports / f"{name}.html"
        # a step not run this time still shows why its last run failed
        error = out.get("error", "") if out else \
            (prev.get("error", "") if prev.get("status") == "failed" else "")
        rows.append(StepRow(name, out["status"] if out else "not run",
                            (out or {}).get("duration_s"), page.name if page.exists() else None,
                            error, note,
                            # the bare name, else the lowest seed's run (`-p seed=1`: `.s1`)
                            read_results_summary(primary_results(reports / "results", name)),
                            step_disk_bytes(checkpoints, name, names) if checkpoints else None,
                            prev.get("planned_s")))
    return rows


def summary_table(rows: list[StepRow]) -> str:
    """The plain-text table printed at the end of a run."""
    lines = [f"{'step':<40} {'status':<18} {'time':>8}  {'AUROC':>6}  error"]
    for row in rows:
        auroc = row.results.get("auroc")
        lines.append(f"{row.name:<40} {row.status:<18} {fmt_duration(row.duration_s):>8}  "
                     f"{fmt_metric(auroc):>6}  {row.error[:80]}")
    return "\n".join(lines)


MERGED = "merged.json"        # reports/merged.json: which runs came from which bundle


def merged_steps(reports: str | Path) -> dict[str, str]:
    """{plan step: the bundles its merged runs or pages came from} (reports/merged.json)."""
    merged = read_json(Path(reports) / MERGED) or {}
    found: dict[str, set[str]] = {}
    for kind in ("runs", "pages"):
        for name, entry in (merged.get(kind) or {}).items():
            step = parse_run_name(Path(name).stem if kind == "pages" else name)[0]
            if isinstance(entry, dict):
                found.setdefault(step, set()).add(str(entry.get("source")))
    return {step: ", ".join(sorted(sources)) for step, sources in found.items()}


def merged_table(reports: str | Path) -> dict[str, str]:
    """The index's "Merged runs": each bundle or folder merged (reports/merged.json, written
    by utils.study.merge) → the runs that came from it."""
    merged = read_json(Path(reports) / MERGED) or {}
    by_source: dict[str, list[str]] = {}
    for run, entry in sorted((merged.get("runs") or {}).items()):
        if isinstance(entry, dict):
            weights = " (+ weights)" if entry.get("weights") else ""
            by_source.setdefault(f"{entry.get('source')}{weights}", []).append(run)
    return {source: ", ".join(runs) for source, runs in by_source.items()}


