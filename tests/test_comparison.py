"""utils.evaluation.comparison on fixture reports (3 models × 2 datasets × 2 seeds, external rows, one
run on another test set): the three lists of 07_comparison.json, the runs listed apart, the
sentences and the study's answer; the paired tests' reference, chosen on validation and
unmoved when the test labels are shuffled; Holm's families and the seed-variance term by
hand; and the 07 notebook rendering them. On the study's five models (`STUDY`): both of the
study's questions, their rows, Holm families and answer, and the models a dataset lacks."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from helpers_comparison import (DATASETS, MODELS, STUDY, make_reports, make_study_reports,
                                permute_test_labels, split_aurocs, write_run)
from utils.evaluation import comparison, questions, stats
from utils.evaluation import comparison_view as view
from utils.evaluation.results import load_results

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> Path:
    return make_reports(tmp_path_factory.mktemp("reports"))


@pytest.fixture(scope="module")
def report(reports) -> dict:
    return comparison.build_report(reports, n_boot=200)


def test_three_lists_have_the_documented_keys(report):
    for key, keys in (("common", comparison.COMMON_KEYS), ("paired", comparison.PAIRED_KEYS),
                      ("external", comparison.EXTERNAL_KEYS)):
        assert report[key], key
        for row in report[key]:
            assert set(keys) <= set(row), (key, set(keys) - set(row))
    assert {(r["dataset"], r["step"]) for r in report["common"]} == \
        {(d, s) for d in DATASETS for s in MODELS}
    assert all(r["seeds"] == 2 and len(r["per_seed"]) == 2 for r in report["common"])
    for r in report["common"]:
        assert r["auroc_lo"] <= r["auroc"] <= r["auroc_hi"]


def test_paired_p_values_and_tests(report):
    for r in report["paired"]:
        assert 0 <= r["p_value"] <= 1 and 0 <= r["p_adjusted"] <= 1
        assert r["test"] == ("delong" if r["metric"] == "auroc" else "paired_bootstrap")
    for dataset in DATASETS:
        common = [r for r in report["common"] if r["dataset"] == dataset]
        paired = [r for r in report["paired"] if r["dataset"] == dataset]
        assert {r["a"] for r in paired} == {report["reference"][dataset]["label"]}
        assert len(paired) == 4 * (len(common) - 1)  # AUROC, F1, sensitivity, specificity


def test_reference_is_the_best_mean_validation_auroc(reports, report):
    for dataset in DATASETS:
        val = {step: np.mean(aucs) for step, aucs in split_aurocs(reports, dataset, "val").items()
               if step in MODELS}  # 04_efficientnet_b4 is on another test set: never ranked
        ref = report["reference"][dataset]
        assert ref["chosen_by"] == "best mean validation AUROC"
        assert ref["step"] == max(val, key=val.get)
        assert ref["val_auroc"] == pytest.approx(val[ref["step"]])
        assert {r["step"]: r["val_auroc"] for r in report["common"]
                if r["dataset"] == dataset} == pytest.approx(val)
    # on rsna the fixture's best test AUROC (02_chexnet) is not its best on validation
    rsna = [r["step"] for r in report["common"] if r["dataset"] == "rsna"]
    assert rsna[0] == "02_chexnet" and report["reference"]["rsna"]["step"] == "05_vit"
    assert {r["a_step"] for r in report["paired"] if r["dataset"] == "rsna"} == {"05_vit"}


def test_shuffled_test_labels_move_the_ranking_not_the_reference(tmp_path):
    make_reports(tmp_path / "real", apart=False)
    shutil.copytree(tmp_path / "real", tmp_path / "shuffled")
    for dataset in DATASETS:
        permute_test_labels(tmp_path / "shuffled", dataset, seed=4)
    real, shuffled = (comparison.build_report(tmp_path / name, n_boot=0)
                      for name in ("real", "shuffled"))
    for dataset in DATASETS:
        top = [[r["step"] for r in rep["common"] if r["dataset"] == dataset][0]
               for rep in (real, shuffled)]
        assert top[0] != top[1], dataset  # the test split now ranks another model first...
        # ...and the reference, the tests against it and the family stay as they were
        assert shuffled["reference"][dataset] == real["reference"][dataset]
        pairs = [{(r["a_step"], r["b_step"]) for r in rep["paired"] if r["dataset"] == dataset}
                 for rep in (real, shuffled)]
        assert pairs[0] == pairs[1] and len(pairs[0]) == len(MODELS) - 1


def test_holm_family_per_dataset_and_metric_by_hand(report):
    for key, per_family in (("paired", len(MODELS) - 1), ("question", 2)):
        adjusted = 0
        for dataset in DATASETS:
            for metric in comparison.METRICS if key == "paired" else ("auroc",):
                family = sorted((r for r in report[key]
                                 if r["dataset"] == dataset and r["metric"] == metric),
                                key=lambda r: r["p_value"])
                assert len(family) == per_family, (key, dataset, metric)
                # Holm, two tests: the smaller p times 2, the larger times 1, kept monotone
                first = min(1.0, 2 * family[0]["p_value"])
                second = min(1.0, max(first, family[1]["p_value"]))
                assert [r["p_adjusted"] for r in family] == pytest.approx([first, second])
                adjusted += sum(r["p_adjusted"] != r["p_value"] for r in family)
        assert adjusted, key  # some p changed: the check above would catch a skipped Holm


def _group(step: str, y: list[int], probs: list[list[float]]) -> comparison.Group:
    return comparison.Group(dataset="d", step=step, model=step, label=step,
                            runs=pd.DataFrame(), y=np.array(y),
                            groups=[f"p{i}" for i in range(len(y))], probs=np.array(probs))


def test_seed_variance_of_the_auroc_contrast_by_hand():
    y = [0, 0, 1, 1]  # four cases: each score row's AUROC is a multiple of 1/4
    auc = {1.0: [0.1, 0.2, 0.3, 0.4], 0.75: [0.1, 0.35, 0.3, 0.4],
           0.5: [0.1, 0.4, 0.2, 0.3], 0.25: [0.3, 0.4, 0.1, 0.35]}
    a = _group("a", y, [auc[1.0], auc[0.75], auc[0.5]])  # seeds 1, 0.75, 0.5: mean 0.75
    b = _group("b", y, [auc[0.75], auc[0.25]])           # seeds 0.75, 0.25: mean 0.5
    row = comparison._auroc_comparison(a, b, 0.05)
    # var(1, .75, .5; ddof=1) / 3 + var(.75, .25; ddof=1) / 2 = 0.0625/3 + 0.125/2 = 1/12
    assert row["seed_variance"] == pytest.approx(1 / 12)
    assert row["delta"] == pytest.approx(0.25)
    delong = stats.delong_contrast(y, np.vstack([a.probs, b.probs]),
                                   [1 / 3] * 3 + [-1 / 2] * 2, a.groups)
    assert row["z"] == pytest.approx(0.25 / np.sqrt(delong["se"] ** 2 + 1 / 12))
    one = comparison._auroc_comparison(_group("a", y, [auc[1.0]]), b, 0.05)
    assert one["seed_variance"] == pytest.approx(0.125 / 2)  # one seed adds no term of its own


def test_seed_variance_in_the_report_is_each_means_s2_over_s(reports, report):
    for dataset in DATASETS:
        test = split_aurocs(reports, dataset, "test")
        for r in (r for r in report["paired"]
                  if r["dataset"] == dataset and r["metric"] == "auroc"):
            want = sum(np.var(test[s], ddof=1) / len(test[s]) for s in (r["a_step"], r["b_step"]))
            assert r["seed_variance"] == pytest.approx(want) and want > 0


def test_reference_ties_and_missing_validation_scores():
    y, p = [0, 1], [[0.2, 0.8]]
    groups = {step: _group(step, y, p) for step in ("03_b", "02_a", "04_c", "05_d")}
    groups["03_b"].val_aurocs, groups["02_a"].val_aurocs = [0.9, 0.8], [0.85, 0.85]
    groups["04_c"].val_aurocs, groups["05_d"].val_aurocs = [0.99, math.nan], []
    ref, record = comparison._reference(list(groups.values()))
    # 04_c's one scored seed is the best, but its other seed has none: not eligible
    assert ref is groups["02_a"] and record["tied_with"] == ["03_b"]  # tie: first by name
    assert record["no_validation"] == ["04_c", "05_d"] and record["val_auroc"] == 0.85
    none, record = comparison._reference([groups["04_c"], groups["05_d"]])
    assert none is None and record["step"] is None and "no model" in record["reason"]


def test_validation_auroc_from_the_csv_else_the_results_json(tmp_path):
    make_reports(tmp_path, seeds=1, apart=False)
    results = tmp_path / "results"

    def edit(run: str, change) -> None:
        path = results / f"{run}.json"
        res = json.loads(path.read_text())
        change(res)
        path.write_text(json.dumps(res))

    csv = results / "06_mlp_mixer.kermany_predictions.csv"
    frame = pd.read_csv(csv)
    frame[frame["split"] != "val"].to_csv(csv, index=False)  # its CSV lost its val rows
    edit("06_mlp_mixer.kermany", lambda res: res["val"].update(auroc=0.987))
    edit("05_vit.kermany", lambda res: res["val"].update(auroc=0.123))  # its CSV has val rows
    val = {r["step"]: r["val_auroc"] for r in comparison.build_report(tmp_path, n_boot=0)["common"]
           if r["dataset"] == "kermany"}
    assert val["06_mlp_mixer"] == 0.987  # from the JSON
    assert val["05_vit"] == pytest.approx(split_aurocs(tmp_path, "kermany", "val")["05_vit"][0])
    edit("06_mlp_mixer.kermany", lambda res: res.pop("val"))
    rep = comparison.build_report(tmp_path, n_boot=0)
    assert rep["reference"]["kermany"]["step"] == "02_chexnet"
    assert rep["reference"]["kermany"]["no_validation"] == ["06_mlp_mixer"]
    assert "not eligible: 06_mlp_mixer" in view.reference_sentence(rep, "kermany")


def test_external_entry_for_every_model_train_and_other_source(report):
    got = {(r["model"], r["train_dataset"], r["test_dataset"]) for r in report["external"]}
    want = {(model, train, test) for model, _ in MODELS.values()
            for train in DATASETS for test in DATASETS if test != train}
    assert got == want
    assert all(r["auroc_lo"] <= r["auroc"] <= r["auroc_hi"] for r in report["external"])


def test_run_on_another_test_set_is_listed_apart_never_ranked(report):
    assert [r["step"] for r in report["apart"]] == ["04_efficientnet_b4.kermany"]
    assert "fp-other" in report["apart"][0]["reason"]
    ranked = {r["step"] for r in report["common"]} | {r["b_step"] for r in report["paired"]}
    assert "04_efficientnet_b4" not in ranked  # although it scores best of all


def test_missing_or_misaligned_predictions_are_listed_apart(tmp_path):
    make_reports(tmp_path, seeds=1, apart=False)
    (tmp_path / "results" / "06_mlp_mixer.kermany_predictions.csv").unlink()
    write_run(tmp_path, "05_vit", "kermany", 1, 1.0, "vit_tiny")  # a second seed...
    csv = tmp_path / "results" / "05_vit.kermany.s43_predictions.csv"
    csv.write_text(csv.read_text().replace("/data/kermany/img3.png", "/data/kermany/x.png"))
    rep = comparison.build_report(tmp_path, n_boot=50)
    reasons = {r["step"]: r["reason"] for r in rep["apart"]}
    assert "no predictions" in reasons["06_mlp_mixer.kermany"]
    assert "differ" in reasons["05_vit.kermany.s43"] and "05_vit.kermany" in reasons
    assert {r["step"] for r in rep["common"] if r["dataset"] == "kermany"} == {"02_chexnet"}


def test_same_fingerprint_but_other_images_is_listed_apart(tmp_path):
    make_reports(tmp_path, seeds=1, apart=False)
    csv = tmp_path / "results" / "06_mlp_mixer.kermany_predictions.csv"
    csv.write_text(csv.read_text().replace("/data/kermany/img3.png", "/data/kermany/x.png"))
    rep = comparison.build_report(tmp_path, n_boot=20)
    assert [(r["step"], "other images" in r["reason"]) for r in rep["apart"]] == \
        [("06_mlp_mixer.kermany", True)]
    assert "06_mlp_mixer" not in {r["b_step"] for r in rep["paired"] if r["dataset"] == "kermany"}


def test_written_json_is_strict_and_not_a_training_run(reports, report):
    path = comparison.write_report(report, reports)
    assert path == reports / "results" / "07_comparison.json"
    data = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert data["common"] == report["common"]
    assert len(load_results(reports)) == 3 * 2 * 2 + 1  # 07_comparison.json is not a run


def test_sentences_say_distinguishable_or_not():
    row = {"a": "densenet121", "b": "vit", "metric": "auroc", "delta": 0.031, "lo": 0.012,
           "hi": 0.050, "p_adjusted": 0.004}
    assert view.sentence(row) == ("densenet121 vs vit: ΔAUROC 0.031 [0.012, 0.050], "
                                  "p_adj = 0.004 — distinguishable")
    row.update(metric="f1", lo=-0.01, p_adjusted=0.21)
    assert view.sentence(row).endswith("ΔF1 0.031 [-0.010, 0.050], p_adj = 0.210 — "
                                       "not distinguishable at α = 0.05")


def _answer(text: str) -> dict[tuple[str, str], str]:
    """The answer's paragraphs by (question, dataset): each question's heading opens with
    `Which CNN` / `Do the transformers`; ("cnn", "") is the heading itself."""
    out, question = {}, None
    for paragraph in text.split("\n\n"):
        if paragraph.startswith(("Which CNN is best?", "Do the transformers")):
            question = "cnn" if paragraph.startswith("Which") else "transformers"
            out[question, ""] = paragraph
        elif question and ": " in paragraph and not paragraph.startswith("Seeds"):
            out[question, paragraph.split(": ")[0]] = paragraph
    return out


def test_study_answer_from_the_numbers(report):
    answer = report["answer"]
    assert answer.startswith("Synthetic demo data")
    parts = _answer(answer)
    assert "vit_tiny falls short of CheXNet" in parts["transformers", "kermany"]  # a clear gap
    assert "cannot tell whether vit_tiny matches CheXNet" in parts["transformers", "rsna"]
    assert all(0 <= r["p_adjusted"] <= 1 for r in report["question"])
    empty = {"datasets": ["kermany"], "question": [], "common": [{"seeds": 1}]}
    assert "no answer" in view.study_answer(empty)


@pytest.fixture(scope="module")
def study_reports(tmp_path_factory) -> Path:
    return make_study_reports(tmp_path_factory.mktemp("study"))


@pytest.fixture(scope="module")
def study(study_reports) -> dict:
    return comparison.build_report(study_reports, n_boot=0)  # DeLong only: no bootstrap


# what `STUDY` holds per dataset: (question, role) → the step answering it
STUDY_ROWS = {"kermany": {("cnn", "resnet"): "03_resnet_ablation_final",
                          ("cnn", "efficientnet"): "04_efficientnet_b4",
                          ("transformers", "vit"): "05_vit"},
              "rsna": {("cnn", "efficientnet"): "04_efficientnet_b4",
                       ("transformers", "vit"): "05_vit",
                       ("transformers", "mixer"): "06_mlp_mixer"}}


def test_both_questions_compare_chexnet_on_the_same_test_images(study_reports, study):
    for dataset, want in STUDY_ROWS.items():
        found = [r for r in study["question"] if r["dataset"] == dataset]
        assert {(r["question"], r["role"]): r["b_step"] for r in found} == want
        test = split_aurocs(study_reports, dataset, "test")  # sklearn, from the CSVs
        for r in found:
            assert r["a_step"] == "02_chexnet" and r["test"] == "delong"
            assert set(comparison.PAIRED_KEYS) <= set(r)
            assert r["seeds_a"] == r["seeds_b"] == 2
            assert r["seed_variance"] == pytest.approx(  # each mean's s²/S, as in `paired`
                sum(np.var(test[s], ddof=1) / 2 for s in (r["a_step"], r["b_step"])))
            assert r["delta"] == pytest.approx(np.mean(test["02_chexnet"])
                                               - np.mean(test[r["b_step"]]))
    # rsna's only ResNet is the ablation's v1: not the question's ResNet, though a resnet
    assert "03_resnet_ablation_v1" in {r["step"] for r in study["common"]
                                       if r["dataset"] == "rsna"}
    assert study["roles"] == {
        "kermany": {"chexnet": "densenet121", "resnet": "resnet18 (final)",
                    "efficientnet": "efficientnet_b0", "vit": "vit_tiny", "mixer": None},
        "rsna": {"chexnet": "densenet121", "resnet": None, "efficientnet": "efficientnet_b0",
                 "vit": "vit_tiny", "mixer": "mixer_tiny"}}


def test_holm_within_each_question_and_dataset_by_hand(study):
    sizes = {}
    for dataset, want in STUDY_ROWS.items():
        for question in questions.QUESTIONS:
            family = sorted((r for r in study["question"]
                             if r["dataset"] == dataset and r["question"] == question),
                            key=lambda r: r["p_value"])
            sizes[dataset, question] = len(family)
            # Holm by hand: the smaller p times the family's size, then monotone
            expected = [min(1.0, len(family) * family[0]["p_value"])]
            expected += [min(1.0, max(expected[0], r["p_value"])) for r in family[1:]]
            assert [r["p_adjusted"] for r in family] == pytest.approx(expected)
    # whole on one dataset, one comparison alone (its own family: p unchanged) on the other
    assert sizes == {("kermany", "cnn"): 2, ("kermany", "transformers"): 1,
                     ("rsna", "cnn"): 1, ("rsna", "transformers"): 2}
    kermany_cnn = [r for r in study["question"]
                   if r["dataset"] == "kermany" and r["question"] == "cnn"]
    assert any(r["p_adjusted"] != r["p_value"] for r in kermany_cnn)  # Holm did act


def test_study_answer_states_both_questions_per_dataset(study):
    answer = study["answer"]
    assert answer.startswith("Synthetic demo data") and answer.endswith("Seeds per model: 2.")
    parts = _answer(answer)
    assert set(parts) == {(q, d) for q in ("cnn", "transformers") for d in ("", *DATASETS)}
    assert parts["cnn", ""].startswith("Which CNN is best? CheXNet (02_chexnet) against "
                                       "ResNet (03_resnet_ablation_final) and EfficientNet-B4 "
                                       "(04_efficientnet_b4)")
    assert parts["cnn", ""].endswith("Answered on kermany; in part on rsna.")
    assert parts["transformers", ""].endswith("Answered on rsna; in part on kermany.")
    resnet = next(r for r in study["question"] if r["role"] == "resnet")
    kermany = parts["cnn", "kermany"]
    assert (f"resnet18 (final) falls short of CheXNet (densenet121): Δ AUROC (CheXNet − "
            f"resnet18 (final)) {view.fmt_ci(resnet['delta'], resnet['lo'], resnet['hi'])}, "
            f"p_adj") in kermany
    assert "efficientnet_b0 falls short of CheXNet" in kermany
    assert kermany.endswith("CheXNet is the best of the three on these test images.")
    rsna = parts["cnn", "rsna"]
    assert "cannot tell whether efficientnet_b0 matches CheXNet" in rsna
    assert rsna.endswith("There is no run of ResNet (03_resnet_ablation_final) on rsna's "
                         "common test set.") and "v1" not in rsna
    assert parts["transformers", "kermany"].endswith(
        "There is no run of Mixer (06_mlp_mixer) on kermany's common test set.")
    assert "cannot tell whether mixer_tiny matches CheXNet" in parts["transformers", "rsna"]


def test_a_question_without_its_models_says_which_run_is_missing(report):
    parts = _answer(report["answer"])  # 3 models × 2 datasets: no ResNet, no EfficientNet
    assert parts["cnn", ""].endswith(
        "Answered on no dataset: no common test set holds CheXNet (02_chexnet) together "
        "with ResNet (03_resnet_ablation_final) or EfficientNet-B4 (04_efficientnet_b4), "
        "so these runs cannot answer it.")
    missing = ("no answer — no run of ResNet (03_resnet_ablation_final) or EfficientNet-B4 "
               "(04_efficientnet_b4) on {}'s common test set.")
    assert parts["cnn", "rsna"] == "rsna: " + missing.format("rsna")
    # kermany's EfficientNet run exists, on another test set: the answer points to it
    assert parts["cnn", "kermany"] == ("kermany: " + missing.format("kermany") + " Listed apart "
                                       "(not on that test set): 04_efficientnet_b4.kermany.")
    assert parts["transformers", ""].endswith("Answered on kermany and rsna.")
    # no CheXNet: no answer to either question; rows written before `question` existed
    # (role vit/mixer only) still answer the transformers' question
    old = {"datasets": ["nih", "rsna"], "common": [{"seeds": 1}],
           "roles": {"nih": {"vit": "vit_mini"},
                     "rsna": {"chexnet": "densenet121", "vit": "vit_mini"}},
           "question": [{k: v for k, v in r.items() if k != "question"}
                        for r in report["question"] if r["dataset"] == "rsna"]}
    parts = _answer(view.study_answer(old))
    assert parts["cnn", "nih"] == ("nih: no answer — no run of CheXNet (02_chexnet), ResNet "
                                   "(03_resnet_ablation_final) or EfficientNet-B4 "
                                   "(04_efficientnet_b4) on nih's common test set.")
    assert parts["transformers", "nih"].startswith("nih: no answer — no run of CheXNet "
                                                   "(02_chexnet) or Mixer (06_mlp_mixer)")
    assert "cannot tell whether vit_tiny matches CheXNet" in parts["transformers", "rsna"]
    assert parts["cnn", "rsna"].startswith("rsna: no answer")


def test_report_says_the_reference_was_chosen_on_validation(report):
    ref = report["reference"]["rsna"]
    text = view.sentences_markdown(report, "rsna")
    assert text.startswith(f"Reference (best on validation): vit_tiny (05_vit), mean "
                           f"validation AUROC {ref['val_auroc']:.3f} over 2 seeds. It was "
                           f"chosen without the test labels")
    assert "- vit_tiny vs densenet121: ΔAUROC" in text
    table = view.paired_table(report, "rsna")
    assert set(table["a: reference (best on validation)"]) == {"vit_tiny"}
    models = view.common_table(report, "rsna")["model"].tolist()
    assert models.count("vit_tiny (reference)") == 1 and models[0] == "densenet121"
    none = {"reference": {"rsna": {**ref, "step": None, "reason": "no model has them"}},
            "paired": []}
    assert view.sentences_markdown(none, "rsna").startswith("rsna: no reference and no "
                                                            "paired tests: no model has them")


def test_tables_format_cis_in_one_cell_and_one_seed_sd(tmp_path, report):
    table = view.common_table(report, "kermany")
    assert table["AUROC [95% CI]"].str.fullmatch(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]").all()
    one = comparison.build_report(make_reports(tmp_path, seeds=1, apart=False), n_boot=50)
    assert (view.common_table(one, "rsna")["AUROC sd (seeds)"] == "n/a (1 seed)").all()
    assert view.seed_note(one, "demo").startswith("Seeds per model in the demo profile: 1. "
                                                  "With one seed")
    html = view.styled(table, "kermany · test split").to_html()
    assert "white-space: nowrap" in html and "kermany · test split" in html


@pytest.mark.notebooks
@pytest.mark.slow
def test_comparison_notebook_renders_the_fixture_reports(reports, tmp_path):
    import papermill as pm

    out = tmp_path / "07_comparison.ipynb"
    pm.execute_notebook(str(ROOT / "notebooks" / "07_comparison.ipynb"), str(out),
                        parameters={"profile": "smoke", "reports_dir": str(reports),
                                    "data_root": str(tmp_path), "step": "07_comparison",
                                    "bootstrap": 50},
                        cwd=str(ROOT / "notebooks"), kernel_name="python3", progress_bar=False)
    outputs = [o for c in nbformat.read(out, 4).cells if c.cell_type == "code" for o in c.outputs]
    text = "\n".join(str(o.get("data", {}).get("text/markdown", "")) +
                     str(o.get("data", {}).get("text/html", "")) for o in outputs)
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2 * len(DATASETS) + 1
    for expected in ("### kermany", "### rsna", "distinguishable", "fp-other",
                     "kermany · test split", "cannot tell"):
        assert expected in text, expected
    saved = json.loads((reports / "results" / "07_comparison.json").read_text())
    assert saved["n_boot"] == 50 and not math.isnan(saved["common"][0]["auroc"])


def test_plots_of_the_report(report):
    from utils.reports import plots

    rows = view.rows(report, "common", "rsna")
    fig = plots.plot_seed_points(rows, "auroc", title="rsna · test split")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == [r["label"] for r in rows]
    assert ax.get_title() == "rsna · test split"
    matrix = plots.plot_external_matrix(report["external"], report["common"])
    assert len([a for a in matrix.axes if a.get_title()]) == len(MODELS)  # one per architecture
    texts = [t.get_text() for t in matrix.axes[0].texts]
    assert len(texts) == len(DATASETS) ** 2 and all("[" in t for t in texts)  # CI in every cell
    empty = plots.plot_external_matrix([], report["common"])
    assert "no external scores" in empty.axes[0].texts[0].get_text()


def test_labels_name_the_ablation_variant_when_two_steps_share_a_model():
    assert comparison._label("vit_tiny", "05_vit", "", clash=False) == "vit_tiny"
    assert comparison._label("resnet18", "03_x_v2", "v2", clash=True) == "resnet18 (v2)"
    assert comparison._label("resnet18_scratch", "03_x", "resnet18_scratch_noreg",
                             clash=True) == "resnet18_scratch_noreg"
    assert comparison._label("resnet50", "04_b", "", clash=True) == "resnet50 (04_b)"
