"""Results in words: the sentences at the top of each report and on the front page.

A reader of a report should not have to find the metrics table to learn what a step showed.
These functions turn results JSON (`reports/results/<run>.json`, `07_comparison.json`) into
short plain-text sentences, each number with its bootstrap 95% CI and the test set it was
measured on. Plain text (the callers escape it); no numbers are computed here that the
results do not hold, except the patient count of a test split, read from the run's own
predictions CSV.
"""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

__all__ = ["fmt_ci", "load_runs", "owner_step", "run_sentences", "runs_summary",
           "comparison_summary", "eda_summary", "gallery_summary", "transfer_summary",
           "step_summary", "headline_rows",
           "COMPARISON_STEP"]

_SYNTHETIC_RUNS = ("These runs used the generated synthetic demo data: the numbers show the "
                   "pipeline works, they are not clinical results.")
COMPARISON_STEP = "07_comparison"   # its results/07_comparison.json holds the `common` list

_NAMES = {"auroc": "AUROC", "f1": "F1", "sensitivity": "sensitivity",
          "specificity": "specificity", "recall": "sensitivity"}


def fmt_ci(value: Any, ci: Any = None, digits: int = 2) -> str:
    """`0.91 [0.88, 0.94]`; just the value when the CI is missing; `n/a` without a value."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
        return "n/a"
    text = f"{value:.{digits}f}"
    lo, hi = (list(ci) + [None, None])[:2] if isinstance(ci, (list, tuple)) else (None, None)
    if isinstance(lo, (int, float)) and isinstance(hi, (int, float)):
        text += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    return text


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _seed_order(res: Mapping[str, Any]) -> tuple:
    """Runs of one step in seed order (the lowest seed first: the one shown in full)."""
    seed = res.get("seed")
    return (seed if isinstance(seed, (int, float)) else math.inf, res.get("seed_index") or 0)


def owner_step(plan_step: str, names: Iterable[str]) -> str:
    """The plan step a run belongs to: its own `plan_step` when that is a step name, else
    the longest step name it starts with (`02_chexnet_nih` is `02_chexnet`'s part A)."""
    names = set(names)
    if plan_step in names:
        return plan_step
    prefixes = [n for n in names if plan_step.startswith(n)]
    return max(prefixes, key=len) if prefixes else plan_step


def load_runs(results_dir: str | Path, step: str, names: Iterable[str] = ()) -> list[dict]:
    """Every training run's results that belong to `step` (see `owner_step`), by name."""
    names = {step, *names}
    runs = []
    for path in sorted(Path(results_dir).glob("*.json")):
        res = _read(path)
        if not res or "test" not in res:
            continue
        plan = str(res.get("plan_step") or res.get("step") or path.stem)
        if owner_step(plan, names) == step:
            runs.append({**res, "_path": str(path)})
    return sorted(runs, key=lambda r: str(r.get("step", "")))


def _test_patients(res: Mapping[str, Any]) -> int | None:
    """Patients in the run's test split: `data.test_patients` or its predictions CSV."""
    known = (res.get("data") or {}).get("test_patients")
    if isinstance(known, int):
        return known
    if not res.get("_path"):
        return None
    csv = Path(str(res["_path"])).with_name(f"{res.get('step')}_predictions.csv")
    try:
        pred = pd.read_csv(csv, usecols=["split", "patient_id"], dtype=str)
    except (OSError, ValueError):
        return None
    ids = pred.loc[pred["split"] == "test", "patient_id"].replace("", pd.NA).dropna()
    return int(ids.nunique()) if len(ids) else None


def _test_set(dataset: str, n: Any, patients: int | None) -> str:
    size = f"n = {n} images" if isinstance(n, int) else "n unknown"
    if patients and patients != n:
        size += f", {patients} patients"
    return f"the {dataset} test split ({size})"


def _metrics(block: Mapping[str, Any], keys=("auroc", "f1", "sensitivity", "specificity")) -> str:
    parts = []
    for key in keys:
        src = key if key in block else {"sensitivity": "recall"}.get(key, key)
        parts.append(f"{_NAMES[key]} {fmt_ci(block.get(src), block.get(f'{src}_ci'))}")
    return ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]


def run_sentences(res: Mapping[str, Any]) -> list[str]:
    """What one run measured: its test split and metrics, threshold, weights, externals."""
    data, test, thr = res.get("data") or {}, res.get("test") or {}, res.get("threshold") or {}
    model = (res.get("model") or {}).get("name", "the model")
    where = _test_set(str(data.get("dataset", "?")), test.get("n"), _test_patients(res))
    out = []
    if data.get("task") == "multilabel" and res.get("per_finding_macro"):
        macro = res["per_finding_macro"].get("macro_auroc")
        n_find = len(res.get("per_finding") or [])
        out.append(f"On {where} {model} reaches a macro AUROC of {fmt_ci(macro)} over "
                   f"{n_find} findings; on its {res.get('target') or 'target'} finding: "
                   f"{_metrics(test)}.")
    else:
        out.append(f"On {where} {model} reaches {_metrics(test)}.")
    if isinstance(thr.get("value"), (int, float)):
        out.append(f"The decision threshold {thr['value']:.2f} ({thr.get('policy', '?')}) "
                   f"was chosen on the validation split; CIs are bootstrap 95% intervals over "
                   f"{(res.get('bootstrap') or {}).get('unit', 'image')}s.")
    pre = res.get("pretrained")
    if isinstance(pre, Mapping) and pre.get("requested") and not pre.get("loaded"):
        out.append("Pretrained weights were asked for but not loaded: it trained from random "
                   "initialisation.")
    for ext in res.get("external") or []:
        where = _test_set(str(ext.get("dataset", "?")), ext.get("n"), None)
        out.append(f"Scored without retraining on {where} at its own threshold: "
                   f"{_metrics(ext)}.")
    return out


def _seeds_sentence(group: list[Mapping[str, Any]]) -> str:
    aurocs = [r["test"]["auroc"] for r in group if isinstance(r["test"].get("auroc"), (int, float))]
    model = (group[0].get("model") or {}).get("name", "the model")
    dataset = (group[0].get("data") or {}).get("dataset", "?")
    if len(aurocs) < 2:
        return ""
    return (f"Over {len(group)} seeds on {dataset}, {model}'s test AUROC averages "
            f"{statistics.mean(aurocs):.2f} (seed range {min(aurocs):.2f}–{max(aurocs):.2f}).")


def runs_summary(runs: list[Mapping[str, Any]]) -> list[str]:
    """Sentences for a step's runs: each run of the first seed in full; per dataset and
    model with several seeds, one sentence on the spread across seeds."""
    groups: dict[tuple, list] = {}
    for res in runs:
        key = ((res.get("data") or {}).get("dataset"), (res.get("model") or {}).get("name"),
               (res.get("data") or {}).get("task"))
        groups.setdefault(key, []).append(res)
    out: list[str] = []
    for group in groups.values():
        group.sort(key=_seed_order)
        first = run_sentences(group[0])
        if len(groups) > 1:  # say which run each paragraph is about
            first[0] = f"{group[0].get('step')}: {first[0]}"
        out += first
        if seeds := _seeds_sentence(group):
            out.append(seeds)
    if any((r.get("data") or {}).get("synthetic") for r in runs):
        out.append(_SYNTHETIC_RUNS)
    return out


def comparison_summary(common: list[Mapping[str, Any]]) -> list[str]:
    """07_comparison's `common` rows in words: per dataset, the highest and the lowest test
    AUROC and whether the top two CIs overlap (then the test set cannot tell them apart).
    It describes the test ranking, which is not a test: the paired tests (07's reference,
    chosen on validation) and the study's answer say which differences are distinguishable."""
    by_dataset: dict[str, list] = {}
    for row in common:
        if isinstance(row.get("auroc"), (int, float)):
            by_dataset.setdefault(str(row.get("dataset")), []).append(row)
    out = []
    for dataset, rows in sorted(by_dataset.items()):
        rows.sort(key=lambda r: -r["auroc"])
        best = rows[0]
        best_ci = fmt_ci(best["auroc"], [best.get("auroc_lo"), best.get("auroc_hi")])
        name = lambda r: r.get("label") or r.get("model")  # noqa: E731 - 07 labels its models
        if len(rows) == 1:
            out.append(f"On {dataset}'s test set one model so far: {name(best)} "
                       f"({best.get('step')}), AUROC {best_ci}.")
            continue
        text = (f"On {dataset}'s common test set, {len(rows)} models compared: the highest "
                f"test AUROC is {name(best)}'s {best_ci}")
        low, second = rows[-1], rows[1]
        text += (f", the lowest {name(low)}'s "
                 f"{fmt_ci(low['auroc'], [low.get('auroc_lo'), low.get('auroc_hi')])}")
        overlap = (isinstance(second.get("auroc_hi"), (int, float))
                   and isinstance(best.get("auroc_lo"), (int, float))
                   and second["auroc_hi"] >= best["auroc_lo"])
        text += ("; the top two CIs overlap, so this test set does not separate them"
                 if overlap else f"; {name(best)}'s CI clears the runner-up's")
        out.append(text + ".")
    return out


def eda_summary(sources: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """00_eda's facts in words: per source, images, patients, pneumonia share, test size.

    Args:
        sources: name -> `{"images", "patients", "positives", "test_images"}` (00_eda.json).
    """
    out = []
    for name, f in sources.items():
        images, patients, pos = f.get("images") or 0, f.get("patients") or 0, f.get("positives")
        if not images:
            out.append(f"{name}: not found under the data root.")
            continue
        text = f"{name}: {images:,} images of {patients:,} patients"
        if patients and images != patients:
            text += f" ({images / patients:.2f} per patient, which is why splits are by patient)"
        if isinstance(pos, (int, float)):
            text += f", {pos / images:.0%} pneumonia"
        if f.get("test_images"):
            text += f"; its test split holds {f['test_images']:,} images"
        out.append(text + ".")
    return out


def _num(value: Any) -> bool:
    return isinstance(value, (int, float)) and value == value  # not None, not NaN


def _hit(row: Mapping[str, Any]) -> str:
    ci = f" [{row['hit_lo']:.0%}, {row['hit_hi']:.0%}]" if _num(row.get("hit_lo")) else ""
    return (f"{row.get('step')} ({row.get('model')}) {row['hit_rate']:.0%}{ci} of "
            f"{row.get('n')} vs {row['random_hit_rate']:.0%}")


def _occ(row: Mapping[str, Any]) -> str:
    return (f"{row.get('step')} mean p {row['p_before']:.2f} → {row['p_mirrored']:.2f}, "
            f"lower for {row['drop_share']:.0%} of {int(row['occlusion_n'])} positives "
            f"(control {row['p_control']:.2f}, lower for {row['control_drop_share']:.0%})")


def _against_untrained(scored: list[Mapping[str, Any]]) -> list[str]:
    """The randomisation check and the maps without a reference, in words (08's rows)."""
    out = []
    if checked := [r for r in scored if _num(r.get("untrained_hit_rate"))]:
        above = [r for r in checked if _num(r.get("hit_lo"))
                 and r["hit_lo"] > r["untrained_hit_rate"]]
        text = (f"The same map of an untrained copy of each network (the model-randomisation "
                f"check) hits {_span([r['untrained_hit_rate'] for r in checked])}; "
                f"{len(above)} of {len(checked)} models' CIs clear their copy")
        below = [f"{r.get('step')} {r['hit_rate']:.0%} vs {r['untrained_hit_rate']:.0%}"
                 for r in checked if r not in above]
        out.append(text + (f" (not: {'; '.join(below)})." if below else "."))
    plain = [r for r in scored if str(r.get("method", "")).endswith("-ref")
             and _num(r.get("plain_hit_rate"))]
    if plain:
        out.append("Without the healthy reference (the best plain method, chosen the same "
                   "way) the maps hit " + "; ".join(
                       f"{r.get('step')} {r['plain_hit_rate']:.0%}" for r in plain) + ".")
    return out


def _span(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.0%}" if lo == hi else f"{lo:.0%}–{hi:.0%}"


def gallery_summary(rows: list[Mapping[str, Any]], synthetic: bool = False) -> list[str]:
    """08's localisation rows in words: how many models' CAMs beat a random point with the
    whole 95% CI (over patients), the best, the untrained copies' and the plain maps' hit
    rates, and every model that is not clear of a random point."""
    scored = [r for r in rows if _num(r.get("hit_rate")) and _num(r.get("random_hit_rate"))]
    out = []
    if not scored:
        out.append("No test split of these runs has boxes, so the CAMs are shown but not "
                   "scored against lesions.")
    else:
        clear = [r for r in scored if _num(r.get("hit_lo")) and r["hit_lo"] > r["random_hit_rate"]]
        best = max(scored, key=lambda r: r["hit_rate"] - r["random_hit_rate"])
        from ..evaluation.cam import CAM_LABELS  # local: the other reports need no torch

        method = CAM_LABELS.get(str(best.get("method")), best.get("method"))
        out.append(f"Pointing game on each run's test positives with boxes: for {len(clear)} "
                   f"of {len(scored)} models the CAM's peak falls inside a box more often than "
                   f"a uniformly random point, with the 95% CI over patients clear of it. The "
                   f"widest margin: {_hit(best)} for a random point "
                   f"({method} at {best.get('layer')}, chosen on validation).")
        out.extend(_against_untrained(scored))
        if rest := [r for r in scored if r not in clear]:
            out.append("Not clear of a random point: " + "; ".join(_hit(r) for r in rest)
                       + ". A model can classify well and still point elsewhere: a CAM "
                         "explains the model, not the disease.")
            if used := [r for r in rest if _num(r.get("p_mirrored"))]:
                out.append("Whether those models use the lesion anyway, with the boxes "
                           "replaced by the mirrored other lung (and, as a control, a "
                           "same-size box without lesion): " + "; ".join(map(_occ, used))
                           + ".")
    if synthetic:
        out.append("These runs used the generated synthetic demo data: the maps show the "
                   "method works, they are not clinical findings.")
    return out


def transfer_summary(own: Mapping[str, Any]) -> list[str]:
    """09_transfer's arms in words: each starting point's test AUROC (95% CI) and its paired
    difference from the reference arm (DeLong p); the arms that could not run."""
    dataset = (own.get("data") or {}).get("dataset", "?")
    model = (own.get("model") or {}).get("name", "the model")
    ref = own.get("reference", "random/all")
    parts = []
    for arm in own.get("arms") or []:
        text = (f"{arm.get('start')}/{arm.get('trainable_from')} "
                f"{fmt_ci(arm.get('auroc'), [arm.get('auroc_lo'), arm.get('auroc_hi')])}")
        delta = arm.get(f"delta_auroc vs {ref}")
        if _num(delta):
            p = arm.get(f"p_delong vs {ref}")
            text += (f" (Δ {delta:+.3f} [{arm[f'delta_lo vs {ref}']:+.3f}, "
                     f"{arm[f'delta_hi vs {ref}']:+.3f}]"
                     + ((", DeLong p < 0.001" if p < 0.001 else f", DeLong p {p:.3f}")
                        if _num(p) else "") + ")")
        parts.append(text)
    out = [f"The same {model} on {dataset}'s test split from each starting point, test AUROC "
           f"(95% CI over patients) and the paired difference from {ref}: "
           + "; ".join(parts) + "."] if parts else ["No transfer arm ran."]
    if skipped := own.get("skipped"):
        names = sorted({f"{a.get('start')}" for a in skipped})
        out.append(f"Not run here: {', '.join(names)} (the table of skipped arms below says "
                   f"why, and where their weights come from).")
    if (own.get("data") or {}).get("synthetic"):
        out.append(_SYNTHETIC_RUNS)
    return out


def step_summary(step: str, results_dir: str | Path, description: str = "",
                 names: Iterable[str] = ()) -> list[str]:
    """The sentences at the top of `step`'s report: its runs', 07's comparison, or — for a
    step that scores no model — what it shows (`description`, the notebook's own words)."""
    results_dir = Path(results_dir)
    if runs := load_runs(results_dir, step, names):
        return runs_summary(runs)
    own = _read(results_dir / f"{step}.json") or {}
    if own.get("common"):
        answer = own.get("answer") if isinstance(own.get("answer"), str) else ""
        return comparison_summary(own["common"]) + [p for p in answer.split("\n\n") if p]
    if own.get("sources"):
        return eda_summary(own["sources"])
    if "localisation" in own:
        return gallery_summary(own["localisation"], bool(own.get("synthetic")))
    if own.get("kind") == "transfer":
        return transfer_summary(own)
    if step == COMPARISON_STEP:  # 07 before it writes its own JSON: the runs it compared
        if rows := headline_rows(results_dir.parent)[0]:
            return comparison_summary(rows)
    first = description.strip().split(". ")[0].rstrip(".")
    return [f"This step scores no model. {first}." if first
            else "This step scores no model and wrote no results file."]


# --- the headline's rows (the front page renders them, utils.reports.headline) ---------------

def _from_runs(results: Path) -> list[dict[str, Any]]:
    """One row per (step, dataset, test set) from the runs' results: the first seed's
    numbers, with the number of seeds found."""
    groups: dict[tuple, list[dict]] = {}
    for path in sorted(results.glob("*.json")):
        res = _read(path)
        if not isinstance(res, dict) or not isinstance(res.get("test"), dict):
            continue
        data = res.get("data") or {}
        key = (res.get("plan_step") or res.get("step") or path.stem, data.get("dataset"),
               data.get("test_fingerprint"))
        groups.setdefault(key, []).append(res)
    rows = []
    for (step, dataset, fp), runs in groups.items():
        runs.sort(key=_seed_order)
        test = runs[0]["test"]
        lo, hi = (test.get("auroc_ci") or [None, None])[:2]
        rows.append({"dataset": dataset, "model": (runs[0].get("model") or {}).get("name"),
                     "step": step, "seeds": len(runs), "auroc": test.get("auroc"),
                     "auroc_lo": lo, "auroc_hi": hi, "f1": test.get("f1"),
                     "sensitivity": test.get("sensitivity", test.get("recall")),
                     "specificity": test.get("specificity"), "test_fingerprint": fp,
                     "n": test.get("n")})
    return rows


def headline_rows(reports: str | Path) -> tuple[list[dict[str, Any]], str]:
    """(rows, where they came from): 07_comparison.json's `common` list, else the runs."""
    results = Path(reports) / "results"
    comparison = _read(results / "07_comparison.json")
    if isinstance(comparison, dict) and isinstance(comparison.get("common"), list) \
            and comparison["common"]:
        rows = [r for r in comparison["common"] if isinstance(r, dict)]
        return rows, ("07_comparison.json: the models on their common test sets (the mean "
                      "over seeds; CIs resample patients and seeds)")
    return _from_runs(results), ("each run's own results (07_comparison has not written its "
                                 "comparison): the first seed of each step")
