"""The study's comparison as data: `reports/results/07_comparison.json` from results + predictions.

Reads `load_results()` and the `<run>_predictions.csv` files only (pandas/numpy/scipy, no
torch) and builds three tables (docs/ARCHITECTURE.md, "07_comparison.json"):

- `common`: per dataset and model (a run_all step), the mean over seeds of AUROC, F1,
  sensitivity and specificity on the shared test images, with hierarchical-bootstrap 95%
  CIs (patients and seeds resampled: `stats.hierarchical_bootstrap`) and each seed's point.
- `paired`: per dataset, every model against one reference on the same images. The reference
  is the model with the best mean *validation* AUROC (`reference`), chosen without the test
  labels: picking it on test would make the K − 1 tests against it a family chosen after
  looking, and inflate the family-wise error Holm is meant to hold at α. AUROC: DeLong's
  test of the difference of the two seed-mean AUROCs (a contrast over all the seeds' ROC
  curves, clustered by patient) with the between-seed variance of each mean (s²/S) added,
  so seeds count as well as test cases. F1/sensitivity/specificity:
  a paired bootstrap over patients, seeds resampled within it, each run at its own
  validation threshold. Holm's correction per (dataset, metric) family.
- `external`: each model scored on the other sources' test splits, at its own threshold.
- `reference`: per dataset, which model the paired tests are against and how it was chosen.
- `question`: the study's two questions (`QUESTIONS`), each CheXNet against two models on
  a dataset's common test set: which CNN is best (the final ResNet, EfficientNet-B4) and do
  the transformers match it (ViT, Mixer). AUROC as in `paired`; Holm within each question
  and dataset (the study asks the two questions separately, each a family fixed by the
  design, not by the results). `roles` says which of those models each dataset holds;
  `answer` puts both in words.

Runs whose test fingerprint differs from their dataset's (most common) one, or that have
no predictions, are listed under `apart` and never ranked.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..fileio import atomic_write_json
from . import stats
from .questions import QUESTIONS, ROLES
from .results import _clean, load_predictions, load_results

__all__ = ["build_report", "write_report", "compare", "REPORT_NAME",
           "COMMON_KEYS", "PAIRED_KEYS", "EXTERNAL_KEYS", "METRICS", "ROLES", "QUESTIONS"]

REPORT_NAME = "07_comparison"
METRICS = ("auroc", *stats.THRESHOLD_METRICS)
COMMON_KEYS = ("dataset", "model", "step", "seeds", "auroc", "auroc_lo", "auroc_hi", "f1",
               "sensitivity", "specificity", "test_fingerprint")
PAIRED_KEYS = ("dataset", "a", "b", "metric", "delta", "lo", "hi", "p_value", "p_adjusted",
               "test")
EXTERNAL_KEYS = ("model", "train_dataset", "test_dataset", "auroc", "auroc_lo", "auroc_hi")
REFERENCE_RULE = "best mean validation AUROC"


@dataclass
class Group:
    """One model (a run_all step) on one test set: its seeds' scores aligned image by image."""

    dataset: str
    step: str
    model: str
    label: str
    runs: pd.DataFrame                   # the load_results rows, one per seed
    y: np.ndarray
    groups: list[str]                    # patient id per image
    probs: np.ndarray                    # seeds × images
    thresholds: list[float] = field(default_factory=list)
    keys: list = field(default_factory=list)  # the images (path, else index), in order
    val_aurocs: list[float] = field(default_factory=list)  # per seed (NaN: none recorded)


def _aligned(frames: list[pd.DataFrame], names: list[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """The first frame's rows in key order and every frame's `prob` in that order; a frame
    whose images or labels differ raises ValueError naming the run."""
    key = "path" if (frames[0]["path"] != "").all() else "index"
    ref = frames[0].sort_values(key).set_index(key)
    if ref.index.has_duplicates:
        raise ValueError(f"{names[0]}: duplicate {key} values in its predictions")
    probs = []
    for frame, name in zip(frames, names):
        other = frame.set_index(key).reindex(ref.index)
        if other["prob"].isna().any() or len(frame) != len(ref) or \
                not np.array_equal(other["target"].to_numpy(), ref["target"].to_numpy()):
            raise ValueError(f"{name}: its images or labels differ from {names[0]}'s")
        probs.append(other["prob"].to_numpy(dtype=float))
    return ref.reset_index(), np.vstack(probs)


def _label(model: str, step: str, variant: Any, clash: bool) -> str:
    """The model's name, with the ablation variant (or step) when two steps share a model."""
    if not clash:
        return model
    if isinstance(variant, str) and variant:  # resnet18_scratch_noreg, not "resnet18_scratch (…)"
        return variant if variant.startswith(model) else f"{model} ({variant})"
    return f"{model} ({step})"


def _predictions(step: str, reports_dir: Path, cache: dict) -> pd.DataFrame | None:
    """A run's predictions CSV, read once per report (None when it has none)."""
    if step not in cache:
        try:
            frame = load_predictions(step, reports_dir)
        except FileNotFoundError:
            frame = None
        if frame is not None and "dataset" not in frame:  # written before external rows
            frame["dataset"] = ""
        cache[step] = frame
    return cache[step]


def _val_auroc(pred: pd.DataFrame, run: pd.Series) -> float:
    """One seed's validation AUROC: from its predictions CSV's `val` rows (the same
    `target`/`prob` column as its test rows, so the same quantity the tests compare), else
    its results JSON's `val.auroc`; NaN when it has neither (or one class only)."""
    rows = pred[pred["split"] == "val"]
    if len(rows):
        y, p = rows["target"].to_numpy(dtype=float), rows["prob"].to_numpy(dtype=float)
        auc = float(stats.weighted_metrics(y, p, 0.5, np.ones((1, len(y))), ["auroc"])["auroc"][0])
        if math.isfinite(auc):
            return auc
    value = run.get("val_auroc")
    return float(value) if value is not None and pd.notna(value) else math.nan


def _collect(runs: pd.DataFrame, reports_dir: Path, cache: dict, split: str = "test",
             dataset: str | None = None) -> tuple[list[Group], list[dict]]:
    """Groups (one per step) of `runs` with their `split` rows; the runs left out, why."""
    groups, apart = [], []
    clashes = runs.groupby("model")["plan_step"].nunique()
    for step, seeds in runs.groupby("plan_step", sort=True):
        seeds = seeds.sort_values("seed_index")
        frames, names, val = [], [], []
        for _, run in seeds.iterrows():
            pred = _predictions(run["step"], reports_dir, cache)
            if pred is None or pd.isna(run["threshold"]):
                apart.append(_apart(run, "no predictions CSV (re-run its step)" if pred is None
                                    else "no validation threshold in its results JSON"))
                continue
            rows = pred[pred["split"] == split]
            if dataset is not None:
                rows = rows[rows["dataset"] == dataset]
            if len(rows):
                frames.append(rows)
                names.append(run["step"])
                val.append(_val_auroc(pred, run))
        if not frames:
            continue
        try:
            ref, probs = _aligned(frames, names)
        except ValueError as exc:
            apart.extend(_apart(r, str(exc)) for _, r in seeds.iterrows())
            continue
        kept = seeds[seeds["step"].isin(names)]
        model = str(kept["model"].iloc[0])
        groups.append(Group(
            dataset=dataset or str(kept["dataset"].iloc[0]), step=str(step), model=model,
            label=_label(model, str(step), kept["variant"].iloc[0], clashes.get(model, 1) > 1),
            runs=kept, y=ref["target"].to_numpy(dtype=int),
            groups=ref["patient_id"].astype(str).tolist(), probs=probs,
            thresholds=kept["threshold"].astype(float).tolist(),
            keys=ref.iloc[:, 0].tolist(),  # reset_index put the key column first
            val_aurocs=val))
    return groups, apart


def _apart(run: pd.Series, reason: str, field: str = "") -> dict[str, Any]:
    """A run listed apart: why, and `field`, the results field that differs (if one does)."""
    return {"dataset": run["dataset"], "step": run["step"], "model": run["model"],
            "test_fingerprint": run["test_fingerprint"], "reason": reason, "field": field,
            **{k: run.get(k) for k in ("seed", "split_seed", "source_version", "profile")}}


def _split_by_fingerprint(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
    """Runs on the dataset's most common test fingerprint, and the others (listed apart);
    then, among those, runs whose split seed or source version (runs merged from another
    machine: `utils.study.merge`) differs from the most common one, listed apart naming the
    field: equal test images by another split or data copy are not the same experiment."""
    fp = runs["test_fingerprint"].fillna("")
    main = fp.value_counts().sort_index().idxmax()  # ties: the first fingerprint in sort order
    other = runs[fp != main]
    reason = "its test set (fingerprint {}) differs from the {} other runs' ({})"
    apart = [_apart(r, reason.format(r["test_fingerprint"] or "missing", int((fp == main).sum()),
                                     main or "missing"), "test_fingerprint")
             for _, r in other.iterrows()]
    runs = runs[fp == main]
    for column in ("split_seed", "source_version"):
        if column not in runs:
            continue
        known = runs[column].dropna()  # older results lack the field: unknown, not different
        if known.nunique() <= 1:
            continue
        usual = known.value_counts().sort_index().idxmax()
        differs = runs[column].notna() & (runs[column] != usual)
        apart += [_apart(r, f"its {column} ({r[column]}) differs from the {int((~differs).sum())} "
                            f"other runs' ({usual})", column) for _, r in runs[differs].iterrows()]
        runs = runs[~differs]
    return runs, apart


def _same_images(groups: list[Group]) -> tuple[list[Group], list[dict]]:
    """Groups on the images and labels most groups share; the others' runs, listed apart
    (equal fingerprints with other images: the fingerprint cannot be trusted to pair them)."""
    if not groups:
        return groups, []
    signature = [(tuple(g.keys), tuple(g.y)) for g in groups]
    common = max(set(signature), key=lambda sig: (signature.count(sig), -signature.index(sig)))
    same = [g for g, sig in zip(groups, signature) if sig == common]
    apart = [_apart(r, "same test fingerprint but other images or labels in its predictions")
             for g, sig in zip(groups, signature) if sig != common for _, r in g.runs.iterrows()]
    return same, apart


def _common_row(g: Group, n_boot: int, seed: int, alpha: float) -> dict[str, Any]:
    ci = stats.hierarchical_bootstrap(g.y, g.probs, g.thresholds, g.groups, n_boot, seed, alpha)
    row: dict[str, Any] = {"dataset": g.dataset, "model": g.model, "label": g.label,
                           "step": g.step, "seeds": len(g.runs),
                           "runs": g.runs["step"].tolist(), "n": int(len(g.y)),
                           "test_fingerprint": g.runs["test_fingerprint"].iloc[0]}
    for m in METRICS:
        row.update({m: ci[m]["mean"], f"{m}_lo": ci[m]["lo"], f"{m}_hi": ci[m]["hi"],
                    f"{m}_sd": ci[m]["sd"]})
    row["val_auroc"] = _mean_val_auroc(g)
    row["profiles"] = sorted({_profile(r) for _, r in g.runs.iterrows()})
    row["per_seed"] = [{"step": r["step"], "seed": r["seed"], "threshold": t,
                        "profile": r.get("profile"), "settings": r.get("settings"),
                        "val_auroc": g.val_aurocs[i], **{m: ci[m]["per_seed"][i] for m in METRICS}}
                       for i, ((_, r), t) in enumerate(zip(g.runs.iterrows(), g.thresholds))]
    for col in ("params", "train_seconds", "images_per_second"):
        row[col] = float(g.runs[col].mean()) if g.runs[col].notna().any() else None
    return row


def _profile(run: pd.Series) -> str:
    """`smoke: image_size=32 epochs=1 ...`: a run's profile and settings, shown beside it
    (runs merged from several members may come from different profiles)."""
    profile, settings = run.get("profile"), run.get("settings")
    profile = profile if isinstance(profile, str) and profile else "?"
    return f"{profile}: {settings}" if isinstance(settings, str) and settings else profile


def _mean_val_auroc(g: Group) -> float:
    """Mean validation AUROC over the model's seeds; NaN if any seed lacks one (a mean over
    fewer seeds would not be the model the test rows average)."""
    values = np.asarray(g.val_aurocs, dtype=float)
    return float(values.mean()) if len(values) and np.isfinite(values).all() else math.nan


def _reference(groups: list[Group]) -> tuple[Group | None, dict[str, Any]]:
    """The model every other is tested against on one test set, and how it was chosen.

    The best mean validation AUROC (`REFERENCE_RULE`): no test label enters the choice, so
    the K − 1 paired tests are a family fixed before the test split is read and Holm holds
    the family-wise error. Ties (within 1e-12) go to the first step in name order. A
    model without validation scores for every seed cannot be the reference (it is still
    tested against it); with none eligible there is no reference and no paired tests.
    """
    scored = [(g, _mean_val_auroc(g)) for g in groups]
    eligible = [(g, v) for g, v in scored if not math.isnan(v)]
    record: dict[str, Any] = {"chosen_by": REFERENCE_RULE, "step": None, "label": None,
                              "model": None, "val_auroc": None, "val_auroc_per_seed": [],
                              "tied_with": [],
                              "no_validation": sorted(g.step for g, v in scored if math.isnan(v))}
    if not eligible:
        record["reason"] = "no model on this test set has validation scores for every seed"
        return None, record
    top = max(v for _, v in eligible)
    # equal up to rounding (means of the same AUROCs summed in another order differ by ~1e-16)
    tied = sorted((g for g, v in eligible if v >= top - 1e-12), key=lambda g: g.step)
    ref = tied[0]
    record.update(step=ref.step, label=ref.label, model=ref.model, val_auroc=_mean_val_auroc(ref),
                  val_auroc_per_seed=list(ref.val_aurocs), tied_with=[g.step for g in tied[1:]])
    return ref, record


def _auroc_comparison(a: Group, b: Group, alpha: float) -> dict[str, Any]:
    """DeLong on mean AUROC(a seeds) − mean AUROC(b seeds), plus s²/S of each mean."""
    scores = np.vstack([a.probs, b.probs])
    contrast = [1 / len(a.probs)] * len(a.probs) + [-1 / len(b.probs)] * len(b.probs)
    per_seed = [stats.delong_contrast(a.y, p[None], [1.0])["aucs"][0] for p in scores]
    seed_var = sum(np.var(per_seed[s], ddof=1) / len(per_seed[s]) if len(per_seed[s]) > 1
                   else 0.0 for s in (slice(0, len(a.probs)), slice(len(a.probs), None)))
    out = stats.delong_contrast(a.y, scores, contrast, a.groups, alpha, extra_var=seed_var)
    return {"metric": "auroc", "test": "delong", "seed_variance": seed_var,
            **{k: out[k] for k in ("delta", "lo", "hi", "z", "p_value")}}


def compare(a: Group, b: Group, n_boot: int, seed: int, alpha: float) -> list[dict[str, Any]]:
    """Every metric of `a` against `b` on the same images (rows without p_adjusted)."""
    base = {"dataset": a.dataset, "a": a.label, "b": b.label, "a_step": a.step,
            "b_step": b.step, "seeds_a": len(a.probs), "seeds_b": len(b.probs)}
    rows = [{**base, **_auroc_comparison(a, b, alpha)}]
    if n_boot > 0:
        boot = stats.paired_bootstrap(a.y, a.probs, a.thresholds, b.probs, b.thresholds,
                                      a.groups, n_boot, seed, alpha)
        rows += [{**base, "metric": m, "test": "paired_bootstrap", **boot[m]} for m in boot]
    return rows


def _holm(rows: list[dict[str, Any]], family: tuple[str, ...] = ("dataset", "metric")
          ) -> list[dict[str, Any]]:
    """`p_adjusted` by Holm within each family: rows equal on the `family` keys."""
    frame = pd.DataFrame(rows)
    for _, idx in frame.groupby(list(family)).groups.items():
        adjusted = stats.holm(frame.loc[idx, "p_value"])
        for i, p in zip(idx, adjusted):
            rows[i]["p_adjusted"] = float(p)
    return rows


def _external_rows(runs: pd.DataFrame, reports_dir: Path, cache: dict, n_boot: int,
                   seed: int, alpha: float) -> list[dict[str, Any]]:
    """Per (model, train source, other source): seed-mean metrics on the other source's
    test split, each run at its own (train source's) validation threshold."""
    rows = []
    for train, by_train in runs.groupby("dataset"):
        preds = [_predictions(step, reports_dir, cache) for step in by_train["step"]]
        others = {str(d) for p in preds if p is not None
                  for d in p.loc[p["split"] == "external", "dataset"]} - {train}
        for test in sorted(others):
            groups, _ = _collect(by_train, reports_dir, cache, split="external", dataset=test)
            for g in groups:
                ci = stats.hierarchical_bootstrap(g.y, g.probs, g.thresholds, g.groups,
                                                  n_boot, seed, alpha)
                rows.append({"model": g.model, "label": g.label, "step": g.step,
                             "train_dataset": train, "test_dataset": test,
                             "seeds": len(g.probs), "n": int(len(g.y)),
                             **{k: v for m in METRICS for k, v in
                                ((m, ci[m]["mean"]), (f"{m}_lo", ci[m]["lo"]),
                                 (f"{m}_hi", ci[m]["hi"]))}})
    return rows


def _role(groups: list[Group], role: str) -> Group | None:
    want = ROLES[role]
    return next((g for g in groups if g.step == want.step), None) or \
        next((g for g in groups if g.model.startswith(want.prefixes)
              and (want.within is None or g.step.startswith(want.within))), None)


def _question_rows(groups: list[Group], alpha: float) -> list[dict[str, Any]]:
    """CheXNet against each other model of each question on one dataset (AUROC; Holm
    within each question later): the models a dataset lacks give no row."""
    chexnet = _role(groups, "chexnet")
    rows = []
    for question, roles in QUESTIONS.items():
        for role in roles:
            other = _role(groups, role)
            if chexnet is not None and other is not None:
                rows.append({"dataset": chexnet.dataset, "a": chexnet.label, "b": other.label,
                             "a_step": chexnet.step, "b_step": other.step, "role": role,
                             "question": question, "seeds_a": len(chexnet.probs),
                             "seeds_b": len(other.probs),
                             **_auroc_comparison(chexnet, other, alpha)})
    return rows


def build_report(reports_dir: str | Path = "reports", n_boot: int = 1000, seed: int = 0,
                 alpha: float = 0.05, margin: float = 0.02) -> dict[str, Any]:
    """The whole comparison (module docstring) as one JSON-ready dict.

    Args:
        n_boot: bootstrap resamples (0: no bootstrap CIs and no F1/sensitivity/specificity
            tests; DeLong still runs).
        margin: an AUROC difference whose whole CI lies within ±margin "matches".
    Example:
        >>> report = build_report("reports", n_boot=cfg.bootstrap)  # doctest: +SKIP
        >>> write_report(report, "reports")
    """
    from .comparison_view import study_answer

    reports_dir = Path(reports_dir)
    runs = load_results(reports_dir)
    runs = runs[runs["dataset"].notna()]
    cache: dict[str, pd.DataFrame | None] = {}
    common, paired, question, apart = [], [], [], []
    roles: dict[str, dict[str, str | None]] = {}  # dataset → the questions' models found
    references: dict[str, dict[str, Any]] = {}    # dataset → the paired tests' reference
    for _, by_dataset in runs.groupby("dataset"):
        kept, left = _split_by_fingerprint(by_dataset)
        groups, missing = _collect(kept, reports_dir, cache)
        apart += left + missing
        groups, unlike = _same_images(groups)
        apart += unlike
        rows = {g.step: _common_row(g, n_boot, seed, alpha) for g in groups}
        # display order only (best test AUROC first): the reference is chosen on validation
        ranked = sorted(groups, key=lambda g: -np.nan_to_num(rows[g.step]["auroc"], nan=-1))
        common += [rows[g.step] for g in ranked]
        ref, chosen = _reference(groups)
        for other in (g for g in ranked if ref is not None and g is not ref):
            paired += compare(ref, other, n_boot, seed, alpha)
        question += _question_rows(groups, alpha)
        if groups:
            roles[groups[0].dataset] = {r: getattr(_role(groups, r), "label", None) for r in ROLES}
            references[groups[0].dataset] = chosen
    report = {
        "step": REPORT_NAME, "alpha": alpha, "n_boot": n_boot, "margin": margin,
        "synthetic": bool(runs["synthetic"].eq(True).any()),
        "datasets": sorted({r["dataset"] for r in common}),
        "common": common, "paired": _holm(paired) if paired else [],
        "external": _external_rows(runs, reports_dir, cache, n_boot, seed, alpha),
        "question": _holm(question, ("dataset", "question", "metric")) if question else [],
        "roles": roles, "apart": apart, "reference": references,
    }
    report["answer"] = study_answer(report)
    return _clean(report)


def write_report(report: dict[str, Any], reports_dir: str | Path = "reports") -> Path:
    """`reports_dir/results/07_comparison.json`, atomically (no `test` key: `load_results`
    does not take it for a training run)."""
    return atomic_write_json(Path(reports_dir) / "results" / f"{REPORT_NAME}.json",
                             _clean(report))
