"""The step report a reader opens (utils/reports/step_report.py), the sentences at its top
(utils/reports/narrative.py) and the caption API (utils/reports/captions.py, plots' `caption=`).

Notebooks here are built in memory with fake outputs: no kernel runs (the real reports are
checked in a browser by test_browser.py)."""
from __future__ import annotations

import base64
import inspect
import json
import re
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from utils.reports import plots
from utils.reports.bundle import check_links
from utils.reports.captions import (CAPTION_TAG, caption_text, captioned, figure_alt_text,
                                    manifest_caption, register_alt_text)
from utils.hosted import badge_markdown
from utils.reports.narrative import (comparison_summary, eda_summary, fmt_ci, owner_step,
                                     run_sentences, step_summary)
from utils.reports.step_report import parameter_rows, render_notebook_html

PNG = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")).decode()


def result(step: str, dataset: str = "rsna", auroc: float = 0.91, **extra) -> dict:
    return {"step": step, "plan_step": step.split(".")[0], "seed_index": 0,
            "model": {"name": "resnet18"},
            "data": {"dataset": dataset, "task": "binary", "synthetic": False,
                     "test_fingerprint": "abc"},
            "test": {"n": 300, "auroc": auroc, "auroc_ci": [0.88, 0.94], "f1": 0.8,
                     "f1_ci": [0.75, 0.85], "recall": 0.9, "recall_ci": [0.85, 0.95],
                     "specificity": 0.7, "specificity_ci": [0.6, 0.8]},
            "threshold": {"value": 0.42, "policy": "max_f1", "chosen_on": "val"},
            "bootstrap": {"unit": "patient"}, **extra}


def executed_notebook() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    code = nbformat.v4.new_code_cell
    nb.cells = [
        nbformat.v4.new_markdown_cell(f"# 05 · ViT\n{badge_markdown('05_vit.ipynb')}\n\n"
                                      "A transformer on chest films."),
        code("import os  # setup"),
        code('epochs = None  # None: the profile decides\nmodel = "vit"', metadata={
            "tags": ["parameters"]}),
        code('# Parameters\nepochs = 2\nstep = "05_vit"\n',
             metadata={"tags": ["injected-parameters"]}),
        nbformat.v4.new_markdown_cell("## Data\ntext"),
        code("fig", outputs=[nbformat.v4.new_output(
            "display_data", {"image/png": PNG, "text/plain": "<Figure>"},
            metadata={"image/png": {"alt": 'RSNA · test split · "n" < 300'}})]),
        nbformat.v4.new_markdown_cell("### Sizes (per split)"),
    ]
    return nb


@pytest.fixture
def report(tmp_path: Path) -> tuple[str, Path]:
    reports = tmp_path / "reports"
    (reports / "results").mkdir(parents=True)
    nbformat.write(executed_notebook(), reports / "05_vit.ipynb")
    (reports / "results" / "05_vit.json").write_text(json.dumps(result("05_vit")))
    pd.DataFrame({"split": ["test"] * 4 + ["val"], "patient_id": ["a", "a", "b", "c", "d"]}) \
        .to_csv(reports / "results" / "05_vit_predictions.csv", index=False)
    (reports / "index.html").write_text("<html></html>")
    out = render_notebook_html(reports / "05_vit.ipynb", reports / "05_vit.html")
    return out.read_text(), reports


def test_code_is_folded_and_parameters_are_a_table(report) -> None:
    page, _ = report
    assert page.count('<details class="cxr-code">') == 4  # every non-empty code cell
    assert "<details class=\"cxr-code\" open" not in page
    assert 'id="cxr-toggle-code"' in page and "querySelectorAll('details.cxr-code')" in page
    table = page[page.index('<table class="cxr-params">'):]
    table = table[:table.index("</table>")]
    assert '<tr class="injected"><td><code>epochs</code></td><td><code>2</code>' in table
    assert "None: the profile decides" in table and '<code>"vit"</code>' in table


def test_summary_contents_and_no_network_assets(report) -> None:
    page, reports = report
    assert ("On the rsna test split (n = 300 images, 3 patients) resnet18 reaches AUROC 0.91 "
            "[0.88, 0.94], F1 0.80 [0.75, 0.85], sensitivity 0.90 [0.85, 0.95] and "
            "specificity 0.70 [0.60, 0.80].") in page
    assert '<nav class="cxr-toc">' in page and ">Sizes (per split)</a></li></ul></li></ol>" in page
    assert "colab-badge.svg" not in page  # an external image would not load offline
    assert "<script src" not in page and "data:image/png;base64," in page
    assert "<title>05 · ViT — 05_vit</title>" in page
    assert check_links(reports) == []  # the contents' anchors and links resolve


def test_images_carry_their_alt_text_and_nbconvert_warns_of_none(tmp_path, caplog) -> None:
    """The figure's alt metadata (utils.reports.captions in the kernel) becomes `<img alt>`, escaped;
    nbconvert has no image without one to warn about."""
    nbformat.write(executed_notebook(), tmp_path / "05_vit.ipynb")
    with caplog.at_level("WARNING"):
        page = render_notebook_html(tmp_path / "05_vit.ipynb", tmp_path / "05_vit.html") \
            .read_text()
    imgs = re.findall(r"<img\b[^>]*>", page)
    assert len(imgs) == 1 and "alt='RSNA · test split · \"n\" &lt; 300'" in imgs[0]
    assert "Alternative text" not in caplog.text and "No description" not in page


def test_parameter_rows_merge_defaults_and_injected() -> None:
    rows = parameter_rows(executed_notebook().cells)
    assert [(r["name"], r["value"], r["set_by"]) for r in rows] == [
        ("epochs", "2", "run_all.py"), ("model", '"vit"', "notebook"),
        ("step", '"05_vit"', "run_all.py")]


def test_run_sentences_externals_seeds_and_random_init(tmp_path: Path) -> None:
    res = result("05_vit", pretrained={"requested": True, "loaded": False},
                 external=[{"dataset": "kermany", "n": 624, "auroc": 0.8, "auroc_ci": [0.7, 0.9],
                            "f1": 0.6, "sensitivity": 0.7, "specificity": 0.5}])
    text = " ".join(run_sentences(res))
    assert "threshold 0.42 (max_f1) was chosen on the validation split" in text
    assert "over patients" in text and "random initialisation" in text
    assert "kermany test split (n = 624 images) at its own threshold: AUROC 0.80 [0.70, 0.90]" \
        in text
    results = tmp_path / "results"
    results.mkdir()
    for k, auroc in enumerate([0.90, 0.80, 0.85]):
        name = "05_vit" + (f".s{k}" if k else "")
        (results / f"{name}.json").write_text(json.dumps(result(name, auroc=auroc) |
                                                         {"seed_index": k}))
    (results / "05_vit.kermany.json").write_text(json.dumps(result("05_vit.kermany", "kermany")))
    lines = step_summary("05_vit", results)
    assert "Over 3 seeds on rsna, resnet18's test AUROC averages 0.85 (seed range 0.80–0.90)." \
        in lines
    assert sum(line.startswith(("05_vit: ", "05_vit.kermany: ")) for line in lines) == 2


def test_runs_belong_to_their_step() -> None:
    names = ["02_chexnet", "03_resnet_ablation_resnet18_scratch",
             "03_resnet_ablation_resnet18_scratch_noreg"]
    assert owner_step("02_chexnet_nih", names) == "02_chexnet"
    assert owner_step("03_resnet_ablation_resnet18_scratch_noreg", names) == names[2]
    assert owner_step("03_resnet_ablation_resnet18_scratch", names) == names[1]


def test_comparison_and_eda_and_plain_steps_in_words(tmp_path: Path) -> None:
    common = [{"dataset": "rsna", "model": "a", "step": "s1", "auroc": 0.9, "auroc_lo": 0.85,
               "auroc_hi": 0.95}, {"dataset": "rsna", "model": "b", "step": "s2", "auroc": 0.8,
                                   "auroc_lo": 0.7, "auroc_hi": 0.84}]
    (line,) = comparison_summary(common)
    assert "the highest test AUROC is a's 0.90 [0.85, 0.95]" in line and \
        "; a's CI clears the runner-up's" in line
    common[1]["auroc_hi"] = 0.88
    assert "top two CIs overlap, so this test set does not separate them" in \
        comparison_summary(common)[0]
    assert eda_summary({"nih": {"images": 300, "patients": 100, "positives": 30,
                                "test_images": 60}}) == [
        "nih: 300 images of 100 patients (3.00 per patient, which is why splits are by "
        "patient), 10% pneumonia; its test split holds 60 images."]
    assert step_summary("08_gallery", tmp_path, "Where each model looks. More.") == [
        "This step scores no model. Where each model looks."]
    assert fmt_ci(0.5, [None, None]) == "0.50" and fmt_ci(None) == "n/a"


# --- captions ---------------------------------------------------------------------------
def test_gallery_and_transfer_reports_open_with_their_results(tmp_path: Path) -> None:
    from utils.evaluation.gallery import localisation_table, save_localisation

    rows = [{"step": "03_v3", "model": "resnet18", "dataset": "kermany", "n": 64,
             "layer": "layer3", "method": "gradcam-ref", "hit_rate": 0.62, "hit_lo": 0.5,
             "hit_hi": 0.74, "random_hit_rate": 0.08, "untrained_hit_rate": 0.1,
             "plain_hit_rate": 0.2},
            {"step": "03_final", "model": "resnet18", "dataset": "kermany", "n": 64,
             "hit_rate": 0.09, "hit_lo": 0.03, "hit_hi": 0.17, "random_hit_rate": 0.08,
             "untrained_hit_rate": 0.05, "occlusion_n": 60, "p_before": 0.41, "p_mirrored": 0.01, "drop_share": 1.0,
             "p_control": 0.40, "control_drop_share": 0.45},
            {"step": "02_nih", "model": "chexnet", "dataset": "kermany", "n": 0,
             "hit_rate": float("nan"), "random_hit_rate": float("nan")}]
    table = localisation_table({r["step"]: {"localisation": r} for r in rows})
    assert table["above_random"].tolist() == [True, False, False]
    save_localisation(table, tmp_path, "08_gradcam_gallery", synthetic=True)
    lines = step_summary("08_gradcam_gallery", tmp_path / "results", "Where each model looks.")
    assert "for 1 of 2 models" in lines[0] and "03_v3 (resnet18) 62% [50%, 74%] of 64" in lines[0]
    assert "(Grad-CAM from a healthy reference at layer3, chosen on validation)" in lines[0]
    assert lines[1] == ("The same map of an untrained copy of each network (the "
                        "model-randomisation check) hits 5%–10%; 1 of 2 models' CIs clear "
                        "their copy (not: 03_final 9% vs 5%).")
    assert lines[2] == ("Without the healthy reference (the best plain method, chosen the "
                        "same way) the maps hit 03_v3 20%.")
    assert lines[3].startswith("Not clear of a random point: 03_final (resnet18) 9% [3%, 17%]")
    assert lines[4].endswith("03_final mean p 0.41 → 0.01, lower for 100% of 60 positives "
                             "(control 0.40, lower for 45%).")
    assert "02_nih" not in " ".join(lines) and "synthetic" in lines[-1]

    arm = {"start": "random", "trainable_from": "all", "auroc": 0.94, "auroc_lo": 0.92,
           "auroc_hi": 0.96}
    nih = {"start": "nih", "trainable_from": "all", "auroc": 0.97, "auroc_lo": 0.95,
           "auroc_hi": 0.98, "delta_auroc vs random/all": 0.026, "delta_lo vs random/all": 0.004,
           "delta_hi vs random/all": 0.045, "p_delong vs random/all": 0.0}
    (tmp_path / "results" / "09_transfer.json").write_text(json.dumps(
        {"kind": "transfer", "reference": "random/all", "arms": [arm, nih],
         "skipped": [{"start": "imagenet", "trainable_from": "head", "why skipped": "offline"}],
         "data": {"dataset": "rsna"}, "model": {"name": "chexnet"}}))
    lines = step_summary("09_transfer", tmp_path / "results", "Transfer.")
    assert "chexnet on rsna's test split" in lines[0] and "random/all 0.94 [0.92, 0.96]" in lines[0]
    assert "nih/all 0.97 [0.95, 0.98] (Δ +0.026 [+0.004, +0.045], DeLong p < 0.001)" in lines[0]
    assert lines[1].startswith("Not run here: imagenet")


def test_caption_text_and_tables() -> None:
    assert caption_text("rsna", "test", n=300, patients=240) == \
        "RSNA Pneumonia · test split · n = 300 images, 240 patients"
    manifest = pd.DataFrame({"patient_id": ["a", "a", "b"], "split": ["test", "test", "train"],
                             "synthetic": True})
    assert manifest_caption(manifest, "kermany", "test") == \
        "Kermany (Chest X-Ray Images, Pneumonia) · test split · n = 2 images, 1 patients · " \
        "synthetic demo data"
    html = captioned(pd.DataFrame({"auroc": [0.91234]}), "RSNA · test split").to_html()
    assert "<caption>RSNA · test split</caption>" in html and "0.912" in html


FIGURES = {  # every figure function of utils.reports.plots, with a small valid input
    "plot_history": lambda c: plots.plot_history([{"epoch": 1, "train_loss": 1.0}], caption=c),
    "plot_learning_curves": lambda c: plots.plot_learning_curves(
        {"a": [{"epoch": 1, "val_auroc": .7, "val_loss": .6}]}, caption=c),
    "plot_roc_pr": lambda c: plots.plot_roc_pr({"m": ([0, 1, 0, 1], [.1, .9, .2, .8])}, caption=c),
    "plot_confusion": lambda c: plots.plot_confusion([[3, 1], [1, 3]], caption=c),
    "plot_reliability": lambda c: plots.plot_reliability(
        {"ece": 0.1, "bin_confidence": [0.2], "bin_accuracy": [0.3], "bin_count": [4],
         "bin_edges": [0, 1]}, caption=c),
    "plot_threshold_sweep": lambda c: plots.plot_threshold_sweep([0, 1], [.2, .8], 0.5, caption=c),
    "plot_metric_bars": lambda c: plots.plot_metric_bars(
        pd.DataFrame({"name": ["a"], "auroc": [.9]}), "auroc", ci=False, caption=c),
    "plot_seed_points": lambda c: plots.plot_seed_points(
        [{"label": "a", "auroc": .9, "auroc_lo": .8, "auroc_hi": .95,
          "per_seed": [{"auroc": .9}]}], caption=c),
    "plot_external_matrix": lambda c: plots.plot_external_matrix(
        [{"model": "a", "train_dataset": "rsna", "test_dataset": "nih", "auroc": .7}],
        caption=c),
    "plot_per_finding_auroc": lambda c: plots.plot_per_finding_auroc({"Mass": 0.7}, caption=c),
    "plot_class_balance": lambda c: plots.plot_class_balance(pd.DataFrame(
        {"split": ["train", "test"], "label": [0, 1], "patient_id": ["a", "b"]}), caption=c),
    "plot_image_sizes": lambda c: plots.plot_image_sizes(
        pd.DataFrame({"width": [10], "height": [12]}), caption=c),
    "image_grid": lambda c: plots.image_grid([np.zeros((4, 4), np.uint8)], caption=c),
    "plot_box_stats": lambda c: plots.plot_box_stats(
        pd.DataFrame({"w": [1.0], "h": [2.0], "cx": [.5], "cy": [.5]}), caption=c),
    "plot_cooccurrence": lambda c: plots.plot_cooccurrence(
        pd.DataFrame({"A": [1, 0], "B": [1, 1]}), ["A", "B"], caption=c),
}


def test_every_figure_function_takes_a_caption() -> None:
    # roc_figure reads a comparison report's predictions files and hands caption= to
    # plot_roc_pr (07's notebook test renders it)
    public = {n for n in plots.__all__ if inspect.isfunction(getattr(plots, n))
              and n not in ("save_figure", "roc_figure")}
    assert public == set(FIGURES)
    for name, build in FIGURES.items():
        fig = build("NIH ChestX-ray14 · test split · n = 2 images")
        texts = [" ".join(t.get_text().split()) for t in fig.texts if t.get_gid() == CAPTION_TAG]
        assert texts == ["NIH ChestX-ray14 · test split · n = 2 images"], name
        assert not [t for t in build(None).texts if t.get_gid() == CAPTION_TAG], name


def test_every_figure_carries_its_caption_else_its_title_as_alt_text() -> None:
    caption = "NIH ChestX-ray14 · test split · n = 2 images, a caption long enough to wrap " * 2
    for name, build in FIGURES.items():
        assert figure_alt_text(build(caption)) == " ".join(caption.split()), name
        assert figure_alt_text(build(None)).strip(), name  # its title, at least
    assert figure_alt_text(plots.image_grid([np.zeros((4, 4))], suptitle="two films")) \
        == "two films"


def test_figures_displayed_in_a_kernel_carry_alt_metadata() -> None:
    """What IPython records for a displayed figure: the PNG (the inline backend's formatter,
    stood in for here) and, once registered, the alt text beside it."""
    from IPython.core.formatters import DisplayFormatter
    from matplotlib.figure import Figure

    formatter = DisplayFormatter()
    formatter.formatters["image/png"].for_type(Figure, lambda fig: b"png bytes")
    fig = plots.plot_confusion([[3, 1], [1, 3]], caption="RSNA · test split · n = 8 images")
    assert formatter.format(fig)[1] == {}
    assert register_alt_text(formatter)
    data, metadata = formatter.format(fig)
    assert data["image/png"] == b"png bytes"
    assert metadata == {"image/png": {"alt": "RSNA · test split · n = 8 images"}}
    assert not register_alt_text()  # no IPython shell in the test process: nothing to do


def test_saved_figure_keeps_its_caption_inside_the_image(tmp_path: Path) -> None:
    plain = plots.save_figure(plots.plot_confusion([[3, 1], [1, 3]]), tmp_path / "a.png")
    with_caption = plots.save_figure(plots.plot_confusion(
        [[3, 1], [1, 3]], caption="RSNA · test split · n = 8 images"), tmp_path / "b.png")
    from PIL import Image

    assert Image.open(with_caption).height > Image.open(plain).height


def test_failed_run_says_so_first(tmp_path: Path) -> None:
    nb = executed_notebook()
    nb.cells[5].outputs = [nbformat.v4.new_output("error", ename="ValueError",
                                                  evalue="bad input", traceback=[])]
    nbformat.write(nb, tmp_path / "05_vit.ipynb")
    page = render_notebook_html(tmp_path / "05_vit.ipynb", tmp_path / "05_vit.html").read_text()
    lead = page[page.index('<div class="cxr-lead">'):]
    assert lead.startswith('<div class="cxr-lead"><p>This run FAILED at code cell 4 of 4 with '
                           "ValueError: bad input")

