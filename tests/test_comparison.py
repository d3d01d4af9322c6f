"""utils.comparison on fixture reports (3 models × 2 datasets × 2 seeds, external rows, one
run on another test set): the three lists of 07_comparison.json, the runs listed apart, the
sentences and the study's answer; and the 07 notebook rendering them."""
from __future__ import annotations

import json
import math
from pathlib import Path

import nbformat
import pytest

from helpers_comparison import DATASETS, MODELS, make_reports, write_run
from utils import comparison
from utils import comparison_view as view
from utils.results import load_results

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
        assert r["p_adjusted"] >= r["p_value"] - 1e-12
        assert r["test"] == ("delong" if r["metric"] == "auroc" else "paired_bootstrap")
    for dataset in DATASETS:
        common = [r for r in report["common"] if r["dataset"] == dataset]
        best = max(common, key=lambda r: r["auroc"])
        paired = [r for r in report["paired"] if r["dataset"] == dataset]
        assert {r["a"] for r in paired} == {best["label"]}
        assert len(paired) == 4 * (len(common) - 1)  # AUROC, F1, sensitivity, specificity


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
    csv = tmp_path / "results" / "05_vit.kermany.s1_predictions.csv"
    csv.write_text(csv.read_text().replace("/data/kermany/img3.png", "/data/kermany/x.png"))
    rep = comparison.build_report(tmp_path, n_boot=50)
    reasons = {r["step"]: r["reason"] for r in rep["apart"]}
    assert "no predictions" in reasons["06_mlp_mixer.kermany"]
    assert "differ" in reasons["05_vit.kermany.s1"] and "05_vit.kermany" in reasons
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


def test_study_answer_from_the_numbers(report):
    answer = report["answer"]
    assert answer.startswith("Synthetic demo data")
    kermany, rsna = answer.split("kermany: ")[1].split("rsna: ")
    assert "vit_tiny falls short of CheXNet" in kermany  # a large, clear gap in the fixture
    assert "cannot tell whether vit_tiny matches CheXNet" in rsna  # equal strengths there
    assert all(0 <= r["p_adjusted"] <= 1 for r in report["question"])
    empty = {"datasets": ["kermany"], "question": [], "common": [{"seeds": 1}]}
    assert "no answer" in view.study_answer(empty)


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
    from utils import plots

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
