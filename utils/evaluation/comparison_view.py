"""What the 07 notebook shows of the comparison report: tables of strings, sentences, the answer.

Each CI is formatted as one string per cell ("0.912 [0.880, 0.940]") and tables are styled
not to wrap, so no number is split across lines. Everything reads the dict that
`utils.evaluation.comparison.build_report` returns (or its JSON), and the names of the study's
questions and models (`questions.QUESTIONS`, `comparison.ROLES`), nothing else.
"""
from __future__ import annotations

import math
from typing import Any

import pandas as pd

from .questions import QUESTIONS, ROLES

__all__ = ["fmt_ci", "fmt_p", "rows", "sentence", "sentences", "sentences_markdown",
           "reference_sentence", "REFERENCE_HEADER",
           "common_table", "paired_table", "external_table", "cost_table", "apart_table",
           "styled", "seed_note", "study_answer"]

_NAMES = {"auroc": "AUROC", "f1": "F1", "sensitivity": "sensitivity",
          "specificity": "specificity"}
REFERENCE_HEADER = "a: reference (best on validation)"


def _missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def fmt_ci(value: Any, lo: Any = None, hi: Any = None, digits: int = 3) -> str:
    """`0.912 [0.880, 0.940]`; the bare value without a CI; `–` without a value."""
    if _missing(value):
        return "–"
    text = f"{value:.{digits}f}"
    return text if _missing(lo) or _missing(hi) else f"{text} [{lo:.{digits}f}, {hi:.{digits}f}]"


def fmt_p(p: Any) -> str:
    if _missing(p):
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def sentence(row: dict[str, Any], alpha: float = 0.05) -> str:
    """`densenet121 vs vit: ΔAUROC 0.031 [0.012, 0.050], p_adj = 0.004 — distinguishable`."""
    p = row.get("p_adjusted")
    verdict = ("distinguishable" if not _missing(p) and p < alpha
               else f"not distinguishable at α = {alpha:g}")
    p_text = fmt_p(p)
    p_text = p_text if p_text.startswith("<") else f"= {p_text}"
    return (f"{row['a']} vs {row['b']}: Δ{_NAMES.get(row['metric'], row['metric'])} "
            f"{fmt_ci(row['delta'], row['lo'], row['hi'])}, p_adj {p_text} — {verdict}")


def rows(report: dict[str, Any], key: str, dataset: str | None = None) -> list[dict]:
    """The report's `key` list (`common`, `paired`, ...), only `dataset`'s rows if given."""
    return [r for r in report.get(key) or [] if dataset is None or r.get("dataset") == dataset]


def sentences(report: dict[str, Any], dataset: str) -> list[str]:
    """One sentence per paired comparison on `dataset`, AUROC first."""
    ordered = sorted(rows(report, "paired", dataset), key=lambda r: r["metric"] != "auroc")
    return [sentence(r, report.get("alpha", 0.05)) for r in ordered]


def reference_sentence(report: dict[str, Any], dataset: str) -> str:
    """Which model `dataset`'s paired tests are against and why (the report's `reference`);
    "" for a report written before it recorded one."""
    ref = (report.get("reference") or {}).get(dataset)
    if not ref:
        return ""
    lacking = ref.get("no_validation") or []
    aside = (f" Without validation scores for every seed, not eligible: "
             f"{', '.join(lacking)}." if lacking else "")
    if not ref.get("step"):
        return f"{dataset}: no reference and no paired tests: {ref.get('reason')}.{aside}"
    seeds = len(ref.get("val_auroc_per_seed") or [])
    tie = (f" (tied on validation with {', '.join(ref['tied_with'])}: the first step by "
           f"name is taken)" if ref.get("tied_with") else "")
    return (f"Reference (best on validation): {ref['label']} ({ref['step']}), mean validation "
            f"AUROC {fmt_ci(ref.get('val_auroc'))} over {seeds} seed{'s' * (seeds != 1)}"
            f"{tie}. It was chosen without the test labels; every other model is tested "
            f"against it, Holm-adjusted per metric.{aside}")


def sentences_markdown(report: dict[str, Any], dataset: str) -> str:
    """The reference, then `sentences` as a Markdown list (or why there is none)."""
    lines = sentences(report, dataset)
    ref = (report.get("reference") or {}).get(dataset)
    if not lines:
        if ref and not ref.get("step"):  # no model could be the reference: the sentence says why
            return reference_sentence(report, dataset)
        return f"_{dataset}: a single ranked model, nothing to compare._"
    body = "\n".join(f"- {line}" for line in lines)
    return "\n\n".join(part for part in (reference_sentence(report, dataset), body) if part)


def _sd(row: dict[str, Any], metric: str) -> str:
    return "n/a (1 seed)" if row["seeds"] < 2 or _missing(row.get(f"{metric}_sd")) \
        else f"{row[f'{metric}_sd']:.3f}"


def common_table(report: dict[str, Any], dataset: str) -> pd.DataFrame:
    """Best test AUROC first: mean over seeds [hierarchical 95% CI], sd over seeds, each
    seed's AUROC; the mean validation AUROC the paired tests' reference was chosen on."""
    out = []
    ref = ((report.get("reference") or {}).get(dataset) or {}).get("step")
    for r in rows(report, "common", dataset):
        row = {"model": r["label"] + (" (reference)" if r["step"] == ref else ""),
               "step": r["step"], "seeds": r["seeds"],
               "val AUROC (mean)": fmt_ci(r.get("val_auroc")),
               "AUROC [95% CI]": fmt_ci(r["auroc"], r["auroc_lo"], r["auroc_hi"]),
               "AUROC sd (seeds)": _sd(r, "auroc"),
               "AUROC per seed": ", ".join(f"{s['auroc']:.3f}" for s in r["per_seed"]
                                           if not _missing(s["auroc"])),
               # runs merged from several members may come from different profiles
               "profile · settings": " | ".join(r.get("profiles") or [])}
        row.update({f"{_NAMES[m]} [95% CI]": fmt_ci(r[m], r.get(f"{m}_lo"), r.get(f"{m}_hi"))
                    for m in ("f1", "sensitivity", "specificity")})
        out.append(row)
    return pd.DataFrame(out)


def paired_table(report: dict[str, Any], dataset: str) -> pd.DataFrame:
    """One row per test of the reference (`a`, best on validation) against another model."""
    return pd.DataFrame([{REFERENCE_HEADER: r["a"], "b": r["b"], "metric": _NAMES.get(r["metric"]),
                          "Δ = a − b [95% CI]": fmt_ci(r["delta"], r["lo"], r["hi"]),
                          "p": fmt_p(r["p_value"]), "p (Holm)": fmt_p(r["p_adjusted"]),
                          "test": r["test"]} for r in rows(report, "paired", dataset)])


def external_table(report: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame([{"model": r["label"], "trained on": r["train_dataset"],
                          "tested on": r["test_dataset"], "seeds": r["seeds"], "images": r["n"],
                          "AUROC [95% CI]": fmt_ci(r["auroc"], r["auroc_lo"], r["auroc_hi"]),
                          "sensitivity": fmt_ci(r.get("sensitivity")),
                          "specificity": fmt_ci(r.get("specificity"))}
                         for r in report.get("external") or []])


def cost_table(report: dict[str, Any], dataset: str) -> pd.DataFrame:
    """Parameters, training time and throughput (means over seeds), smallest model first."""
    ordered = sorted(rows(report, "common", dataset), key=lambda r: r.get("params") or 0)
    return pd.DataFrame([{"model": r["label"], "step": r["step"],
                          "parameters (M)": fmt_ci((r.get("params") or math.nan) / 1e6, digits=2),
                          "train time (s)": fmt_ci(r.get("train_seconds"), digits=1),
                          "train images/s": fmt_ci(r.get("images_per_second"), digits=1),
                          "test AUROC": fmt_ci(r["auroc"])} for r in ordered])


def apart_table(report: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame(report.get("apart") or [],
                        columns=["dataset", "step", "model", "field", "test_fingerprint",
                                 "reason"])


def styled(table: pd.DataFrame, caption: str):
    """A captioned Styler that never wraps a cell (one CI stays on one line); an empty
    table shows "none" rather than a bare header."""
    if table.empty:
        table = pd.DataFrame({"": ["none"]})
    return (table.style.hide(axis="index").set_caption(caption)
            .set_properties(**{"white-space": "nowrap", "text-align": "left"})
            .set_table_styles([{"selector": "caption", "props": "font-weight: bold; "
                                "text-align: left; caption-side: top"}]))


def seed_note(report: dict[str, Any], profile: str = "") -> str:
    """How many seeds each model has, and what one seed means for the numbers."""
    seeds = sorted({r["seeds"] for r in report.get("common") or []})
    if not seeds:
        return "No training runs with predictions were found."
    where = f" in the {profile} profile" if profile else ""
    text = f"Seeds per model{where}: {', '.join(map(str, seeds))}."
    if seeds[0] < 2:
        text += (" With one seed, sd reads 'n/a (1 seed)' and that model's CIs carry test "
                 "sampling only (the full profile trains 3 seeds).")
    return text


def _verdict(row: dict[str, Any], alpha: float, margin: float) -> str:
    name = row["b"]
    ci = f"Δ AUROC (CheXNet − {name}) {fmt_ci(row['delta'], row['lo'], row['hi'])}, " \
         f"p_adj {'< 0.001' if row['p_adjusted'] < 0.001 else '= ' + fmt_p(row['p_adjusted'])}"
    if row["p_adjusted"] < alpha:
        side = "falls short of" if row["delta"] > 0 else "beats"
        return f"{name} {side} CheXNet ({row['a']}): {ci}."
    if -margin <= row["lo"] and row["hi"] <= margin:
        return f"{name} matches CheXNet ({row['a']}) within ±{margin:g} AUROC: {ci}."
    reach = max(abs(row["lo"]), abs(row["hi"]))
    return (f"The data cannot tell whether {name} matches CheXNet ({row['a']}): {ci}; "
            f"differences up to {reach:.3f} AUROC are compatible with these test images.")


# how the answer asks each question of `questions.QUESTIONS`
_ASKED = {"cnn": "Which CNN is best?", "transformers": "Do the transformers match CheXNet?"}


def _role_name(role: str) -> str:
    """`EfficientNet-B4 (04_efficientnet_b4)`: the study's name and the run_all step."""
    return f"{ROLES[role].name} ({ROLES[role].step})"


def _join(items: list[str], word: str = "and") -> str:
    return ", ".join(items[:-1]) + f" {word} " + items[-1] if len(items) > 1 else "".join(items)


def _names(roles: list[str] | tuple[str, ...], word: str = "and") -> str:
    """`ResNet (03_resnet_ablation_final) or EfficientNet-B4 (04_efficientnet_b4)`."""
    return _join([_role_name(r) for r in roles], word)


def _question_rows(report: dict[str, Any], dataset: str, question: str) -> list[dict]:
    """`question`'s rows on `dataset`; a row without a `question` key (a report written
    before the first question was asked) belongs to the transformers'."""
    return [r for r in rows(report, "question", dataset)
            if r.get("question", "transformers") == question]


def _apart_note(report: dict[str, Any], dataset: str, missing: list[str]) -> str:
    """The missing models' runs on `dataset` that exist but were listed apart (another test
    set, no predictions): "no run on its common test set" is true, yet a reader would look
    for them."""
    steps = sorted(a["step"] for a in rows(report, "apart", dataset)
                   if str(a.get("step", "")).startswith(tuple(ROLES[r].step for r in missing)))
    return f" Listed apart (not on that test set): {', '.join(steps)}." if steps else ""


def _dataset_answer(report: dict[str, Any], dataset: str, question: str) -> tuple[str, int]:
    """`dataset`'s paragraph for `question` and how many of its comparisons it holds."""
    alpha, margin = report.get("alpha", 0.05), report.get("margin", 0.02)
    found = _question_rows(report, dataset, question)
    roles = (report.get("roles") or {}).get(dataset, {})
    tested = {r.get("role") for r in found}
    if not found:
        missing = [r for r in ("chexnet", *QUESTIONS[question]) if not roles.get(r)]
        return (f"{dataset}: no answer — no run of {_names(missing, 'or')} on {dataset}'s "
                f"common test set.{_apart_note(report, dataset, missing)}", 0)
    text = f"{dataset}: " + " ".join(_verdict(r, alpha, margin) for r in found)
    if lacking := [r for r in QUESTIONS[question] if r not in tested]:
        text += (f" There is no run of {_names(lacking, 'or')} on {dataset}'s common test "
                 f"set.{_apart_note(report, dataset, lacking)}")
    elif question == "cnn" and all(r["p_adjusted"] < alpha and r["delta"] > 0 for r in found):
        # ahead of both at the family's α: the one ranking these tests can settle
        text += " CheXNet is the best of the three on these test images."
    return text, len(found)


def _coverage(counts: dict[str, int], question: str) -> str:
    """Where `question` is answered: every comparison made, some, or none."""
    size = len(QUESTIONS[question])
    full = [d for d, n in counts.items() if n == size]
    part = [d for d, n in counts.items() if 0 < n < size]
    none = [d for d, n in counts.items() if n == 0]
    if not full and not part:
        return (f"Answered on no dataset: no common test set holds {_role_name('chexnet')} "
                f"together with {_names(QUESTIONS[question], 'or')}, so these runs cannot "
                f"answer it.")
    said = [f"Answered on {_join(full)}"] if full else []
    if part:
        said.append(f"{'in part' if full else 'Answered in part'} on {_join(part)}")
    if none:
        said.append(f"not on {_join(none)}")
    return "; ".join(said) + "."


def _question_answer(report: dict[str, Any], question: str) -> list[str]:
    """`question` asked, where it is answered, then one paragraph per dataset."""
    paragraphs, counts = [], {}
    for dataset in report.get("datasets") or []:
        text, counts[dataset] = _dataset_answer(report, dataset, question)
        paragraphs.append(text)
    against = _names(QUESTIONS[question])
    head = (f"{_ASKED[question]} {_role_name('chexnet')} against {against}, on each "
            f"dataset's common test set (DeLong on the seed-mean AUROC, Holm over this "
            f"question's comparisons per dataset). {_coverage(counts, question)}")
    return [head, *paragraphs]


def study_answer(report: dict[str, Any]) -> str:
    """The study's two questions answered per dataset from the `question` rows: which CNN
    is best (CheXNet against the final ResNet and EfficientNet-B4) and do ViT and Mixer,
    with less inductive bias, match CheXNet. Paragraphs separated by blank lines."""
    lines = [line for question in QUESTIONS for line in _question_answer(report, question)]
    if report.get("synthetic"):
        lines.insert(0, "Synthetic demo data: these sentences show the machinery, not a "
                        "finding about the architectures.")
    seeds = seed_note(report)
    return "\n\n".join([*lines, seeds] if seeds.startswith("Seeds") else lines)
