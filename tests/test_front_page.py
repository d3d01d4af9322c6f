"""The front page (utils/reports/index.py + headline.py) and the bundle (utils/reports/bundle.py),
on hand-written results files: no kernel runs."""
from __future__ import annotations

import html
import json
import zipfile
from pathlib import Path

from utils.reports.bundle import BUNDLE_FOLDER, bundle_files, check_links, write_bundle
from utils.reports.headline import headline_rows, render_headline
from utils.reports.html_page import forest_svg
from utils.reports.index import StepRow, build_rows, step_disk_bytes, write_index


def results(reports: Path, name: str, dataset: str, auroc: float, fp: str = "f1",
            seed_index: int = 0) -> None:
    (reports / "results").mkdir(parents=True, exist_ok=True)
    (reports / "results" / f"{name}.json").write_text(json.dumps({
        "step": name, "plan_step": name.split(".")[0], "seed_index": seed_index,
        "model": {"name": f"m_{name.split('.')[0]}"},
        "data": {"dataset": dataset, "test_fingerprint": fp},
        "test": {"n": 120, "auroc": auroc, "auroc_ci": [auroc - .05, auroc + .04], "f1": .7,
                 "recall": .8, "specificity": .6}}))


def test_headline_prefers_07s_common_list(tmp_path: Path) -> None:
    results(tmp_path, "05_vit", "rsna", 0.7)
    rows, source = headline_rows(tmp_path)
    assert source.startswith("each run's own results") and rows[0]["auroc"] == 0.7
    common = [{"dataset": "rsna", "model": "vit", "step": "05_vit", "seeds": 3, "auroc": 0.81,
               "auroc_lo": 0.75, "auroc_hi": 0.86, "f1": 0.7, "sensitivity": 0.8,
               "specificity": 0.6, "test_fingerprint": "f1"}]
    (tmp_path / "results" / "07_comparison.json").write_text(json.dumps({"common": common}))
    rows, source = headline_rows(tmp_path)
    assert source.startswith("07_comparison.json") and rows == common
    html = render_headline(rows, source, existing={"05_vit.html"})
    assert '<a href="05_vit.html">05_vit</a>' in html and "[0.750, 0.860]" in html
    assert "<svg" in html and "rsna, test split" in html
    # 07's labels name the models; a part-A run links to its step's report; 07's answer leads
    common.append({**common[0], "label": "CheXNet part A", "step": "02_chexnet_nih",
                   "auroc": 0.7, "auroc_lo": 0.6, "auroc_hi": 0.8})
    html = render_headline(common, source, existing={"02_chexnet.html"},
                           answer="rsna: ViT falls short of CheXNet.\n\nSeeds: 3.")
    assert '<td>CheXNet part A</td><td><a href="02_chexnet.html">02_chexnet_nih</a>' in html
    assert "<p>rsna: ViT falls short of CheXNet.</p><p>Seeds: 3.</p>" in html


def test_front_page_answers_both_of_the_studys_questions(tmp_path: Path) -> None:
    """07's answer on the index, end to end: the study's five models (helpers_comparison),
    07_comparison.json written, the page rendered; each question per dataset, and the
    model a dataset lacks named."""
    from helpers_comparison import make_study_reports
    from utils.evaluation import comparison

    reports = make_study_reports(tmp_path / "reports")
    comparison.write_report(comparison.build_report(reports, n_boot=0), reports)
    page = write_index(reports / "index.html", [], run_date="d", profile="demo",
                       data_root=str(tmp_path / "nodata"), synthetic=True).read_text()
    lead = page[page.index("<b>The study's questions</b> (07_comparison)"):]
    paragraphs = [html.unescape(p.split("</p>")[0])
                  for p in lead[:lead.index("</div>")].split("<p>")[1:]]
    assert [p.split("?")[0] for p in paragraphs if "?" in p] == [
        "Which CNN is best", "Do the transformers match CheXNet"]
    assert paragraphs[0].startswith("Synthetic demo data")
    cnn, transformers = (paragraphs.index(p) for p in paragraphs if "?" in p)
    assert [p.split(":")[0] for p in paragraphs[cnn + 1:transformers]] == ["kermany", "rsna"]
    assert "resnet18 (final) falls short of CheXNet" in paragraphs[cnn + 1]
    assert "no run of ResNet (03_resnet_ablation_final) on rsna's common test set" in \
        paragraphs[cnn + 2]
    assert "no run of Mixer (06_mlp_mixer) on kermany's common test set" in \
        paragraphs[transformers + 1]
    assert paragraphs[-1].startswith("Seeds per model: 2.")


def test_headline_groups_by_test_set_and_ranks_within_it(tmp_path: Path) -> None:
    results(tmp_path, "04_efficientnet_b4", "kermany", 0.80)
    results(tmp_path, "03_resnet_ablation_final", "kermany", 0.90)
    results(tmp_path, "03_resnet_ablation_final.s1", "kermany", 0.88, seed_index=1)
    results(tmp_path, "05_vit", "kermany", 0.95, fp="other")  # another test set: not ranked
    rows, _ = headline_rows(tmp_path)
    html = render_headline(rows, "x", existing=set())
    first, second = html.index("kermany (test set f1)"), html.index("kermany (test set other)")
    block = html[first:second]
    assert block.index("m_03_resnet_ablation_final") < block.index("m_04_efficientnet_b4")
    assert "m_05_vit" not in block
    seeds = next(r for r in rows if r["step"] == "03_resnet_ablation_final")["seeds"]
    assert seeds == 2 and "<a href" not in block  # no report pages exist: no dead links


def test_forest_plot_draws_a_whisker_per_model() -> None:
    svg = forest_svg([("a", 0.9, 0.85, 0.95), ("b", 0.7, None, None)])
    assert svg.count("<circle") == 2 and svg.count('stroke-width="2"') == 1
    assert forest_svg([]) == ""


def test_index_shows_disk_errors_settings_and_sorts(tmp_path: Path) -> None:
    reports, ckpts = tmp_path / "reports", tmp_path / "checkpoints"
    results(reports, "05_vit", "rsna", 0.7)
    for run, size in (("05_vit", 1000), ("05_vit.kermany.s1", 500), ("02_chexnet_nih", 7)):
        (ckpts / run).mkdir(parents=True)
        (ckpts / run / "best.pt").write_bytes(b"0" * size)
    names = ["02_chexnet", "05_vit", "06_mlp_mixer"]
    assert step_disk_bytes(ckpts, "05_vit", names) == 1500
    assert step_disk_bytes(ckpts, "02_chexnet", names) == 7
    assert step_disk_bytes(ckpts, "06_mlp_mixer", names) is None
    state = {"06_mlp_mixer": {"status": "failed", "error": "RuntimeError: out of memory"}}
    rows = build_rows(names, {"05_vit": {"status": "ok", "duration_s": 3.0}}, state, reports,
                      ckpts)
    assert [r.disk_bytes for r in rows] == [7, 1500, None]
    page = write_index(reports / "index.html", rows, run_date="d", profile="demo",
                       data_root=str(tmp_path / "nodata"), synthetic=False,
                       settings={"-p": "epochs=2"}).read_text()
    assert "1.5 KB" in page and "RuntimeError: out of memory" in page
    assert "epochs=2" in page and "table.sortable" in page and 'id="headline"' in page
    assert "http" not in page and "<link" not in page and "src=" not in page
    assert ">planned<" not in page  # no step was priced (a CPU --plan never measured)


def test_bundle_holds_every_page_and_what_they_link(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    (reports / "results").mkdir(parents=True)
    (reports / "results" / "05_vit.json").write_text("{}")
    (reports / "results" / "05_vit_predictions.csv").write_text("x")  # not linked: still in
    (reports / "results" / "notes.txt").write_text("x")  # neither linked nor data: left out
    (reports / "index.html").write_text('<a href="05_vit.html#top">v</a>'
                                        '<a href="results/05_vit.json">json</a>')
    (reports / "05_vit.html").write_text('<h1 id="top">t</h1><a href="index.html">i</a>'
                                         '<a href="https://colab.example/x">colab</a>')
    assert check_links(reports) == []
    files = {p.relative_to(reports.resolve()).as_posix() for p in bundle_files(reports)}
    assert files == {"index.html", "05_vit.html", "results/05_vit.json"}
    out = write_bundle(reports, tmp_path / "out" / "b.zip")
    with zipfile.ZipFile(out) as zf:
        names = set(zf.namelist())
        zf.extractall(tmp_path / "unzipped")
    # beside the pages: the predictions (what a merge needs: docs/study-group.md), the manifest
    assert names == {f"{BUNDLE_FOLDER}/{f}" for f in
                     [*files, "results/05_vit_predictions.csv", "bundle.json"]}
    assert check_links(tmp_path / "unzipped" / BUNDLE_FOLDER) == []


def test_check_links_names_what_would_break(tmp_path: Path) -> None:
    (tmp_path / "a.html").write_text(
        '<a href="missing.html">x</a><a href="#nope">y</a><img src="https://cdn/x.png">'
        '<a href="/etc/passwd">z</a><a href="../outside.html">o</a><a id="ok" href="#ok">k</a>')
    (tmp_path.parent / "outside.html").write_text("")
    problems = "\n".join(check_links(tmp_path))
    for part in ("missing file missing.html", "no anchor #nope", "loads from the network",
                 "absolute address", "points outside"):
        assert part in problems
    assert len(check_links(tmp_path)) == 5
