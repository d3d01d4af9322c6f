"""The front page's headline comparison: per dataset and test set, every model's AUROC with
its CI, from `07_comparison.json` when the comparison ran, else from the runs' own results.

Only runs whose test sets have the same fingerprint are ranked together (README "Honest
evaluation"), so a group is (dataset, test_fingerprint); a dataset with one test set shows
as just its name.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .html_page import esc, fmt_metric, forest_svg, table
from .narrative import _read, comparison_summary, headline_rows, owner_step

__all__ = ["headline_rows", "comparison_answer", "render_headline", "COMMON_KEYS"]

COMMON_KEYS = ("dataset", "model", "step", "seeds", "auroc", "auroc_lo", "auroc_hi", "f1",
               "sensitivity", "specificity", "test_fingerprint")


def comparison_answer(reports: str | Path) -> str:
    """07_comparison.json's `answer` to the study's two questions, or ""."""
    comparison = _read(Path(reports) / "results" / "07_comparison.json")
    answer = comparison.get("answer") if isinstance(comparison, dict) else None
    return answer if isinstance(answer, str) else ""


def _groups(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    by_fp: dict[tuple, list] = {}
    for row in rows:
        by_fp.setdefault((str(row.get("dataset")), row.get("test_fingerprint")), []).append(row)
    datasets = [d for d, _ in by_fp]
    out = {}
    for (dataset, fp), group in sorted(by_fp.items(), key=lambda kv: str(kv[0])):
        title = dataset if datasets.count(dataset) == 1 else f"{dataset} (test set {fp})"
        out[title] = sorted(group, key=lambda r: -(r.get("auroc") if isinstance(
            r.get("auroc"), (int, float)) else -1))
    return out


def _name(row: dict[str, Any]) -> str:
    return str(row.get("label") or row.get("model") or "")


def _cells(row: dict[str, Any], existing: set[str]) -> list[str]:
    lo, hi = row.get("auroc_lo"), row.get("auroc_hi")
    ci = f"[{fmt_metric(lo)}, {fmt_metric(hi)}]" if fmt_metric(lo) and fmt_metric(hi) else ""
    step = str(row.get("step") or "")
    page = owner_step(step, {n[:-5] for n in existing}) + ".html"  # 02_chexnet_nih -> 02's
    link = f'<a href="{esc(page)}">{esc(step)}</a>' if page in existing else esc(step)
    num = lambda k: (f'<td class="num" data-v="{fmt_metric(row.get(k)) or ""}">'
                     f"{fmt_metric(row.get(k))}</td>")
    return [f"<td>{esc(_name(row))}</td>", f"<td>{link}</td>",
            f'<td class="num">{esc(str(row.get("seeds") or ""))}</td>', num("auroc"),
            f'<td class="num">{ci}</td>', num("f1"), num("sensitivity"), num("specificity")]


def render_headline(rows: list[dict[str, Any]], source: str, existing: set[str],
                    answer: str = "") -> str:
    """The headline section: the study's answers (07's), then per test set a sentence, a
    sortable table and a CI plot.

    Args:
        existing: report file names that exist (a step without a report gets no link).
        answer: `07_comparison.json`'s `answer` (paragraphs separated by blank lines).
    """
    if not rows:
        return ('<h2 id="headline">Headline comparison</h2><p class="note">No model results '
                "yet: the comparison appears here once a model step has finished.</p>")
    parts = ['<h2 id="headline">Headline comparison</h2>']
    if answer:
        parts.append('<div class="lead"><b>The study\'s questions</b> (07_comparison): '
                     + "".join(f"<p>{esc(p)}</p>" for p in answer.split("\n\n")) + "</div>")
    head = ["model", "step", "seeds", "AUROC", "95% CI", "F1", "sensitivity", "specificity"]
    for title, group in _groups(rows).items():
        n = next((r.get("n") for r in group if r.get("n")), None)
        caption = f"{title}, test split" + (f", n = {n} images" if n else "")
        sentence = " ".join(esc(s) for s in comparison_summary(group))
        body = [_cells(row, existing) for row in group]
        plot = forest_svg([(_name(r), r.get("auroc"), r.get("auroc_lo"),
                            r.get("auroc_hi")) for r in group],
                          label=f"{title}: test AUROC with 95% CI")
        parts.append(f'<h3>{esc(caption)}</h3><p class="lead">{sentence}</p><div class="grid">'
                     f"<div>{table(head, body)}</div><div>{plot}</div></div>")
    parts.append(f'<p class="note">Source: {esc(source)}. Models are ranked within a test '
                 "set, never across datasets.</p>")
    return "\n".join(parts)
