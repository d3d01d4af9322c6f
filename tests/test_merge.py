"""A study group's bundles merged into one comparison (`run_all.py --bundle / --merge`,
utils.reports.bundle, utils.study.merge; docs/study-group.md).

One module fixture splits the plan between two members, each running their part in the
smoke profile in their own folder (the ablation's `final` + 07; the ViT, with weights),
bundles each, merges both bundles into an empty folder, and gathers the two parts' files
into one folder by hand. (One model step each keeps the suite's budget; the rehearsal
runs every step.)
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from utils.evaluation.results import parse_run_name
from utils.reports.bundle import BUNDLE_FOLDER, MANIFEST, MERGED
from utils.study.merge import merge_paths

ROOT = Path(__file__).resolve().parents[1]
# one model step per member keeps the suite's budget; what a merge does is the same for more
HALF_A = ["03_resnet_ablation_final"]   # + 07: its own comparison
HALF_B = ["05_vit"]

pytestmark = [pytest.mark.slow, pytest.mark.notebooks]


def run_all(*argv: object) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "run_all.py", "--profile", "smoke",
                           *map(str, argv)], cwd=ROOT, capture_output=True, text=True,
                          timeout=3600)  # a hang guard, not a time limit on the test
    return proc


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def steps(runs) -> set[str]:
    """The plan steps of some run names (`04_efficientnet_b4.rsna` -> `04_efficientnet_b4`)."""
    return {parse_run_name(r)[0] for r in runs}


def runs_of(base: Path) -> set[str]:
    """The training runs (results JSON with predictions) in a folder."""
    return {p.name[: -len("_predictions.csv")]
            for p in (base / "reports" / "results").glob("*_predictions.csv")}


def folder(base: Path) -> list[str]:
    return ["--reports-dir", base / "reports", "--checkpoint-dir", base / "checkpoints"]


def comparison(base: Path) -> dict:
    return json.loads((base / "reports" / "results" / "07_comparison.json").read_text())


def snapshot(base: Path) -> dict[str, bytes]:
    """Every file under results/ and checkpoints/, and merged.json: name -> bytes."""
    files = [*(base / "reports" / "results").glob("*"), base / "reports" / MERGED,
             *(base / "checkpoints").rglob("*.pt")]
    return {str(p.relative_to(base)): p.read_bytes() for p in files if p.is_file()}


@pytest.fixture(scope="module")
def group(tmp_path_factory) -> SimpleNamespace:
    tmp = tmp_path_factory.mktemp("merge")
    a, b = tmp / "a", tmp / "b"
    ok(run_all(*folder(a), "--only", *HALF_A, "07_comparison", "--bundle", tmp / "a.zip"))
    ok(run_all(*folder(b), "--only", *HALF_B, "--bundle", tmp / "b.zip", "--with-weights"))
    merged = tmp / "merged"
    merge = ok(run_all(*folder(merged), "--merge", tmp / "a.zip", tmp / "b.zip"))
    hand = tmp / "hand"  # the halves' results and predictions gathered by hand
    (hand / "reports" / "results").mkdir(parents=True)
    for member in (a, b):
        for path in (member / "reports" / "results").glob("*"):
            if path.name != "07_comparison.json":
                shutil.copy(path, hand / "reports" / "results" / path.name)
    ok(run_all(*folder(hand), "--only", "07_comparison", "--force"))
    solo = tmp / "solo"  # member A's own bundle alone
    ok(run_all(*folder(solo), "--merge", tmp / "a.zip"))
    return SimpleNamespace(tmp=tmp, a=a, b=b, merged=merged, hand=hand, solo=solo, merge=merge)


def test_bundle_carries_results_predictions_manifest_and_weights_when_asked(group):
    with zipfile.ZipFile(group.tmp / "a.zip") as zf:
        names = set(zf.namelist())
        manifest = json.loads(zf.read(f"{BUNDLE_FOLDER}/{MANIFEST}"))
    assert set(manifest["runs"]) == runs_of(group.a) and steps(manifest["runs"]) == set(HALF_A)
    for run, entry in manifest["runs"].items():
        assert f"{BUNDLE_FOLDER}/{entry['results']}" in names
        assert f"{BUNDLE_FOLDER}/{entry['predictions']}" in names
        assert entry["seed"] == 42 and entry["split_seed"] == 42 and entry["schema"] == 2
        assert entry["test_fingerprint"] and entry["source_version"]
    assert manifest["profile"] == "smoke" and manifest["with_weights"] is False
    assert not any(n.endswith("best.pt") for n in names)
    assert manifest["test_fingerprints"] and manifest["package_versions"]["python"]
    with zipfile.ZipFile(group.tmp / "b.zip") as zf:
        manifest = json.loads(zf.read(f"{BUNDLE_FOLDER}/{MANIFEST}"))
        assert manifest["with_weights"] is True
        assert {f"{BUNDLE_FOLDER}/checkpoints/{r}/best.pt" for r in runs_of(group.b)} \
            <= set(zf.namelist())


def test_merged_bundles_give_the_comparison_of_the_runs_gathered_by_hand(group):
    merged, hand = comparison(group.merged), comparison(group.hand)
    assert {r["step"] for r in merged["common"]} == set(HALF_A + HALF_B)
    assert runs_of(group.merged) == runs_of(group.a) | runs_of(group.b)
    assert merged["paired"], "no paired tests: the halves were not compared with each other"
    assert merged == hand  # every AUROC, CI and paired p value
    assert merged["apart"] == []
    for row in merged["common"]:
        assert row["profiles"] and row["profiles"][0].startswith("smoke: image_size=")


def test_merge_re_renders_08_for_weights_and_records_provenance(group):
    reports = group.merged / "reports"
    provenance = json.loads((reports / MERGED).read_text())["runs"]
    assert {r: e["source"] for r, e in provenance.items()} == {
        **{r: "a.zip" for r in runs_of(group.a)}, **{r: "b.zip" for r in runs_of(group.b)}}
    assert {r for r, e in provenance.items() if e["weights"]} == runs_of(group.b)
    assert {p.parent.name for p in (group.merged / "checkpoints").glob("*/best.pt")} \
        == runs_of(group.b)
    assert (reports / "08_gradcam_gallery.html").is_file()
    index = (reports / "index.html").read_text()
    assert 'id="merged"' in index and "a.zip" in index and "05_vit" in index
    # the members' own step reports came along; each step they ran shows as merged, linked
    pages = json.loads((reports / MERGED).read_text())["pages"]
    assert {"05_vit.html", *(f"{s}.html" for s in HALF_A)} <= set(pages)
    assert "07_comparison.html" not in pages and "index.html" not in pages  # re-rendered
    assert (reports / "05_vit.html").read_bytes() == \
        (group.b / "reports" / "05_vit.html").read_bytes()
    for step in HALF_A + HALF_B:
        assert re.search(rf'<a href="{step}.html">{step}</a>.*?<td class="merged">merged</td>',
                         index), step


def test_one_members_bundle_alone_reproduces_its_own_comparison(group):
    assert comparison(group.solo) == comparison(group.a)
    assert not (group.solo / "reports" / "08_gradcam_gallery.html").exists()  # no weights


def test_merging_the_same_bundle_twice_changes_nothing(group):
    before = snapshot(group.merged)
    html = (group.merged / "reports" / "07_comparison.html").read_bytes()
    proc = ok(run_all(*folder(group.merged), "--merge", group.tmp / "a.zip", group.tmp / "b.zip"))
    assert "identical" in proc.stdout + proc.stderr
    assert snapshot(group.merged) == before
    assert (group.merged / "reports" / "07_comparison.html").read_bytes() == html


def _zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def test_zip_slip_truncated_and_broken_bundles_are_refused_one_message_each(group, tmp_path):
    good = (group.tmp / "a.zip").read_bytes()
    results = group.a / "reports" / "results"
    run = HALF_A[0]
    slip = _zip(tmp_path / "slip.zip", {
        f"{BUNDLE_FOLDER}/results/{run}.json": (results / f"{run}.json").read_bytes(),
        "../escaped.txt": b"x"})
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(good[: len(good) // 2])
    no_preds = _zip(tmp_path / "nopreds.zip", {
        f"{BUNDLE_FOLDER}/results/{run}.json": (results / f"{run}.json").read_bytes()})
    old = json.loads((results / f"{run}.json").read_text())
    old.pop("schema")
    older = _zip(tmp_path / "older.zip", {
        f"{BUNDLE_FOLDER}/results/{run}.json": json.dumps(old).encode(),
        f"{BUNDLE_FOLDER}/results/{run}_predictions.csv":
            (results / f"{run}_predictions.csv").read_bytes()})
    text = tmp_path / "notes.txt"
    text.write_text("not a bundle")
    target = tmp_path / "target"
    out = merge_paths([slip, truncated, no_preds, older, text, group.tmp / "b.zip"],
                      target / "reports", target / "checkpoints")
    errors = out.errors
    assert "zip-slip" in errors[str(slip)] and "../escaped.txt" in errors[str(slip)]
    assert "truncated" in errors[str(truncated)] and "truncated.zip" in errors[str(truncated)]
    assert f"{run}_predictions.csv" in errors[str(no_preds)] and "missing" in errors[str(no_preds)]
    assert "schema 1" in errors[str(older)] and f"{run}.json" in errors[str(older)]
    assert "not a bundle" in errors[str(text)]
    assert not (tmp_path / "escaped.txt").exists() and not (target / "escaped.txt").exists()
    # the good PATH merged; nothing of the refused ones was copied, nor any temporary folder
    assert set(out.merged) == runs_of(group.b)
    names = {p.name for p in (target / "reports" / "results").iterdir()}
    assert names == {f"{r}{s}" for r in runs_of(group.b) for s in (".json", "_predictions.csv")}
    assert [p.name for p in (target / "reports").iterdir() if p.name.startswith(".merge")] == []


def test_a_same_named_run_that_differs_is_reported_and_kept_unless_forced(group, tmp_path):
    target = tmp_path / "member"
    shutil.copytree(group.merged / "reports" / "results", target / "reports" / "results")
    run = HALF_B[0]
    theirs = tmp_path / "theirs" / "reports" / "results"
    theirs.mkdir(parents=True)
    res = json.loads((group.b / "reports" / "results" / f"{run}.json").read_text())
    res["test"]["auroc"] = 0.123
    (theirs / f"{run}.json").write_text(json.dumps(res))
    shutil.copy(group.b / "reports" / "results" / f"{run}_predictions.csv", theirs)
    local = target / "reports" / "results" / f"{run}.json"
    before = local.read_bytes()
    out = merge_paths([theirs.parent], target / "reports", target / "checkpoints")
    assert out.conflicts == {run: str(theirs.parent)} and not out.merged
    assert local.read_bytes() == before
    out = merge_paths([theirs.parent], target / "reports", target / "checkpoints", force=True)
    assert list(out.merged) == [run]
    assert json.loads(local.read_text())["test"]["auroc"] == 0.123


def test_a_run_of_another_split_seed_or_source_version_is_listed_apart_with_the_field(tmp_path):
    """Cheap (no fixture): equal test fingerprints, but one run of another split seed and
    one of another source version; 07 lists them apart naming the field, never ranks them."""
    from helpers_comparison import make_reports

    from utils.evaluation.comparison import build_report

    reports = make_reports(tmp_path / "reports", seeds=2, apart=False)
    results = reports / "results"
    for path in results.glob("*.json"):
        res = json.loads(path.read_text())
        res["config"] = {"split_seed": 42, "profile": "demo", "image_size": 64}
        res["data"]["source_version"] = "v1"
        if path.stem == "05_vit.s43":
            res["config"]["split_seed"] = 7
        if path.stem == "02_chexnet.kermany.s43":
            res["data"]["source_version"] = "v2"
        path.write_text(json.dumps(res))
    report = build_report(reports, n_boot=0)
    apart = {a["step"]: a for a in report["apart"]}
    assert set(apart) == {"05_vit.s43", "02_chexnet.kermany.s43"}
    assert apart["05_vit.s43"]["field"] == "split_seed" and "7" in apart["05_vit.s43"]["reason"]
    assert apart["02_chexnet.kermany.s43"]["field"] == "source_version"
    ranked = {s for row in report["common"] for s in row["runs"]}
    assert not ranked & set(apart) and "05_vit" in ranked
    assert all(row["profiles"] == ["demo: image_size=64"] for row in report["common"])
