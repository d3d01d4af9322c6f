"""run_all.py: the plan, the command line, papermill execution, HTML reports, skip/resume.

Notebook runs use the tiny fixtures in tests/fixtures (ok: writes a results JSON and a PNG;
fail: raises; hold: waits while a file exists) through `main(argv, plan=...)`. Each kernel
start costs ~2 s, so runs are shared: one module-scoped run feeds the report tests.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import run_all
from utils.study import execute
from utils.study import plan as planning
from run_all import main
from utils.study.plan import Step
from utils.config import PROFILES
from utils.reports.index import StepRow, read_results_summary, render_index
from utils.study.run_state import code_digest, data_facts, fingerprint, load_state

FIXTURES = Path(__file__).parent / "fixtures"
DEMO_ROOT = FIXTURES / "no-data"   # never read by the fixtures; data_root is fingerprinted
MODEL_STEPS = ["02_chexnet", *[f"03_resnet_ablation_{v}" for v in (
    "cnn", "resnet18_scratch_noreg", "resnet18_scratch", "v1", "v2", "v3", "final")],
    "04_efficientnet_b4", "05_vit", "06_mlp_mixer"]


def fixture_plan() -> list[Step]:
    return [Step("a_ok", "ok.ipynb"), Step("b_fail", "fail.ipynb"),
            Step("c_after", "ok.ipynb", after=("a_ok", "b_fail"))]


def cli(tmp: Path, *extra: str) -> list[str]:
    return ["--notebooks-dir", str(FIXTURES), "--reports-dir", str(tmp / "reports"),
            "--checkpoint-dir", str(tmp / "checkpoints"), "--profile", "smoke", *extra]


def freeze(mp: pytest.MonkeyPatch, tmp: Path) -> None:
    """A private code dir (colleagues edit utils/ while tests run) and a fake data root."""
    code = tmp / "code"
    code.mkdir(exist_ok=True)
    (code / "lib.py").write_text("x = 1\n")
    mp.setattr(execute, "CODE_DIR", code)
    mp.setattr(execute, "resolve_data", lambda value: (DEMO_ROOT, True))


def state(tmp: Path) -> dict:
    return json.loads((tmp / "reports" / ".run_state.json").read_text())["steps"]


# --- the plan and the command line (no kernels) -------------------------------------------
def test_default_plan_names_params_and_dependencies():
    plan = {s.name: s for s in planning.default_plan()}
    assert list(plan) == ["00_eda", "01_preprocessing", *MODEL_STEPS, "07_comparison",
                          "08_gradcam_gallery", "09_transfer"]
    assert plan["09_transfer"].after == ("02_chexnet",)  # it starts from 02's NIH weights
    assert {plan[f"03_resnet_ablation_{v}"].params["variant"] for v in planning.ABLATION_VARIANTS} \
        == set(planning.ABLATION_VARIANTS)
    base = {"profile": "x", "data_root": "/d", "reports_dir": "/r", "checkpoint_dir": "/c"}
    model = {p: planning.resolve_params(plan["05_vit"], base, p, {}, {}).get("model")
             for p in PROFILES}
    assert model == {"demo": "vit_mini", "smoke": "vit_mini", "kaggle": None, "colab": None,
                     "full": None, "rehearsal": "vit_mini"}
    assert planning.resolve_params(plan["06_mlp_mixer"], base, "demo", {}, {})["model"] \
        == "mixer_tiny"
    assert {p: planning.resolve_params(plan["04_efficientnet_b4"], base, p, {}, {})["model"]
            for p in PROFILES} == {"demo": "efficientnet_b0", "smoke": "efficientnet_b0",
                                   "kaggle": "efficientnet_b4", "colab": "efficientnet_b4",
                                   "full": "efficientnet_b4", "rehearsal": "efficientnet_b0"}
    common = {s.name for s in plan.values() if s.params.get("datasets") == "all"}
    assert common == {"02_chexnet", "03_resnet_ablation_cnn", "03_resnet_ablation_resnet18_scratch",
                      "03_resnet_ablation_final", "04_efficientnet_b4", "05_vit", "06_mlp_mixer"}
    assert plan["07_comparison"].after == plan["08_gradcam_gallery"].after == tuple(MODEL_STEPS)
    assert planning.resolve_params(plan["09_transfer"], base, "demo", {}, {})["epochs"] == 2


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_default_step_validates(profile):
    base = {"profile": profile, "data_root": "/d", "reports_dir": "/r", "checkpoint_dir": "/c"}
    for step in planning.default_plan():
        planning.validate(step, planning.resolve_params(step, base, profile, {}, {}))


@pytest.mark.parametrize("text, value", [("true", True), ("False", False), ("3", 3),
                                         ("-2", -2), ("0.5", 0.5), ("1e-3", 1e-3),
                                         ("resnet18", "resnet18"), ("", "")])
def test_parse_value(text, value):
    assert planning.parse_value(text) == value and type(planning.parse_value(text)) is type(value)


def test_precedence_and_step_overrides():
    step = Step("s", "ok.ipynb", params={"model": "a", "lr": 0.1},
                profile_params={"smoke": {"model": "b"}})
    plan = [step, Step("t", "ok.ipynb")]
    base = {"profile": "smoke", "data_root": "/d", "reports_dir": "/r", "checkpoint_dir": "/c"}
    assert planning.resolve_params(step, base, "demo", {}, {})["model"] == "a"
    assert planning.resolve_params(step, base, "smoke", {}, {})["model"] == "b"
    global_, per_step = planning.parse_overrides(["model=c", "s.model=d", "epochs=2",
                                                 "[st].tta=true"], plan)
    assert global_ == {"model": "c", "epochs": 2}
    assert per_step == {"s": {"model": "d", "tta": True}, "t": {"tta": True}}
    merged = planning.resolve_params(step, base, "smoke", global_, per_step)
    assert (merged["model"], merged["epochs"], merged["lr"], merged["step"]) == ("d", 2, 0.1, "s")
    assert planning.resolve_params(plan[1], base, "smoke", global_, per_step)["model"] == "c"


def test_only_and_from_select_in_plan_order():
    plan = planning.default_plan()
    names = lambda only=None, start=None: [s.name for s in planning.select_steps(plan, only, start)]
    assert names(["03_*"]) == MODEL_STEPS[1:8]
    assert names(["08_gradcam_gallery", "00_eda", "0[56]_*"]) == [
        "00_eda", "05_vit", "06_mlp_mixer", "08_gradcam_gallery"]
    assert names(start="05_vit") == ["05_vit", "06_mlp_mixer", "07_comparison",
                                     "08_gradcam_gallery", "09_transfer"]
    assert names(["0[0-4]*"], "03_resnet_ablation_v3") == MODEL_STEPS[6:9]


@pytest.mark.parametrize("extra, message", [
    (["-p", "epoch=3"], "unknown parameter 'epoch'"),
    (["-p", "epochs"], "expected key=value"),
    (["-p", "epochs=0"], "epochs=0 must be >= 1"),
    (["-p", "lr=fast"], "expected float"),
    (["-p", "a_ok.optimizer=lion"], "step a_ok: optimizer='lion'"),
    (["-p", "zz.epochs=2"], "no step named 'zz'"),
    (["-p", "step=x"], "step names are fixed"),
    (["-p", "data_root=/x"], "--data-root"),
    (["--only", "zz_*"], "--only 'zz_*' matches no step"),
    (["--from", "nope"], "--from 'nope' matches no step"),
])
def test_usage_errors_exit_2_before_any_work(tmp_path, monkeypatch, capsys, extra, message):
    freeze(monkeypatch, tmp_path)
    monkeypatch.setattr(execute, "execute", lambda *a, **k: pytest.fail("a notebook ran"))
    assert main(cli(tmp_path, *extra), plan=fixture_plan()) == 2
    err = capsys.readouterr().err
    assert message in err
    if "unknown parameter" in message:
        assert "epochs" in err  # the valid names are listed
    assert not (tmp_path / "reports").exists()


def test_unknown_key_is_rejected_before_data_is_resolved(tmp_path, monkeypatch):
    freeze(monkeypatch, tmp_path)
    monkeypatch.setattr(execute, "resolve_data", lambda v: pytest.fail("data resolved"))
    assert main(cli(tmp_path, "-p", "nosuch=1"), plan=fixture_plan()) == 2


def test_missing_notebook_is_a_usage_error(tmp_path, monkeypatch, capsys):
    freeze(monkeypatch, tmp_path)
    assert main(cli(tmp_path), plan=[Step("x", "missing.ipynb")]) == 2
    assert str(FIXTURES / "missing.ipynb") in capsys.readouterr().err


def test_profile_defaults_to_data_kind(tmp_path, monkeypatch, capsys):
    freeze(monkeypatch, tmp_path)
    argv = cli(tmp_path, "--list")
    argv.remove("--profile"), argv.remove("smoke")
    assert main(argv, plan=fixture_plan()) == 0
    assert "profile=demo" in capsys.readouterr().out
    monkeypatch.setattr(execute, "resolve_data", lambda v: (tmp_path / "real", False))
    assert main(argv, plan=fixture_plan()) == 0
    assert "profile=full" in capsys.readouterr().out


# --- fingerprints, state, index (no kernels) ----------------------------------------------
def test_fingerprint_tracks_what_changes_the_results(tmp_path):
    nb, code = tmp_path / "n.ipynb", tmp_path / "code"
    nb.write_text("{}")
    code.mkdir()
    (code / "m.py").write_text("a = 1\n")
    params = {"step": "s", "epochs": 1, "data_root": "/d", "reports_dir": "/r1"}
    base = fingerprint(nb, params, code_digest(code), {})
    assert fingerprint(nb, {**params, "reports_dir": "/r2"}, code_digest(code), {}) == base
    assert fingerprint(nb, {**params, "data_root": "/e"}, code_digest(code), {}) != base
    assert fingerprint(nb, {**params, "epochs": 2}, code_digest(code), {}) != base
    assert fingerprint(nb, params, code_digest(code), {"u": ["f", "ok", "h"]}) != base
    (code / "m.py").write_text("a = 2\n")
    assert fingerprint(nb, params, code_digest(code), {}) != base
    nb.write_text('{"cells": []}')
    assert fingerprint(nb, params, code_digest(code), {}) != base


def test_data_facts_see_new_labels_and_mapping_but_not_images_or_outputs(tmp_path):
    """Downloading the full NIH labels or RSNA's mapping must re-run the steps; new image
    files, and folders a run writes (DICOM → PNG), must not."""
    root = tmp_path / "data"
    rsna = root / "rsna-pneumonia-detection-challenge"
    (rsna / "stage_2_train_images").mkdir(parents=True)
    (rsna / "stage_2_train_labels.csv").write_text("patientId,x,y,width,height,Target\n")
    facts = data_facts(root)
    assert [f[0] for f in facts] == ["rsna", "root"]
    nb, params = tmp_path / "n.ipynb", {"step": "s"}
    nb.write_text("{}")
    base = fingerprint(nb, params, "c", {}, facts)
    assert fingerprint(nb, params, "c", {}) != base  # the facts are part of it
    (rsna / "stage_2_train_images" / "x.dcm").write_bytes(b"0")
    (rsna / "stage_2_train_images_png").mkdir()
    assert fingerprint(nb, params, "c", {}, data_facts(root)) == base
    own = root / "my-mapping"  # on Kaggle: a dataset of one's own beside the read-only ones
    own.mkdir()
    (own / "pneumonia-challenge-dataset-mappings_2018.json").write_text("[]")
    assert fingerprint(nb, params, "c", {}, data_facts(root)) != base


def test_unreadable_state_is_a_lost_cache(tmp_path, caplog):
    path = tmp_path / ".run_state.json"
    path.write_text('{"steps": ')
    assert load_state(path) == {}
    assert "every step will run" in caplog.text


def test_results_summary_is_defensive(tmp_path):
    assert read_results_summary(tmp_path / "none.json")["auroc"] is None
    (tmp_path / "bad.json").write_text("{not json")
    assert "unreadable" in read_results_summary(tmp_path / "bad.json")["problem"]
    (tmp_path / "part.json").write_text(json.dumps({"test": {"auroc": 0.9, "f1": "n/a"},
                                                    "data": "oops"}))
    part = read_results_summary(tmp_path / "part.json")
    assert (part["auroc"], part["f1"], part["dataset"]) == (0.9, None, None)


def test_index_page_is_self_contained_and_escaped():
    rows = [StepRow("a", "ok", 3.0, "a.html", results={"synthetic": True, "auroc": 0.91234}),
            StepRow("b<x>", "failed", 1.0, None, error="ValueError: <script>bad</script>")]
    page = render_index(rows, run_date="2024-01-01", profile="demo", data_root="/d",
                        synthetic=False)
    assert "SYNTHETIC DEMO DATA — not clinical results" in page  # a row says synthetic
    assert '<a href="a.html">a</a> <span class="badge">synthetic demo data</span>' in page
    assert "0.912" in page and "<script>bad" not in page and "&lt;script&gt;bad" in page
    assert "http" not in page and "<link" not in page
    clean = render_index(rows[1:], run_date="d", profile="full", data_root="/d",
                         synthetic=False)
    assert "SYNTHETIC" not in clean


# --- executing notebooks --------------------------------------------------------------------
DRIVER = """
import sys
from pathlib import Path
sys.path.insert(0, {root!r})
import run_all
from utils.study import execute
from utils.study.plan import Step
execute.CODE_DIR = Path({code!r})
execute.resolve_data = lambda value: (Path({demo!r}), True)
sys.exit(run_all.main(sys.argv[1:], plan={plan}))
"""
FIXTURE_PLAN = ('[Step("a_ok", "ok.ipynb"), Step("b_fail", "fail.ipynb"), '
                'Step("c_after", "ok.ipynb", after=("a_ok", "b_fail"))]')


def driver(tmp: Path, plan: str) -> Path:
    """A script running `plan` (Python source) through run_all.main as `freeze` sets it up,
    in its own process: the console it prints is what a person sees, file descriptors and
    all (a kernel writes to the stderr it inherits)."""
    code = tmp / "code"
    code.mkdir(exist_ok=True)
    (code / "lib.py").write_text("x = 1\n")
    path = tmp / "driver.py"
    path.write_text(DRIVER.format(root=str(run_all.ROOT), code=str(code), demo=str(DEMO_ROOT),
                                  plan=plan))
    return path


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """One run of the fixture plan: a_ok ok, b_fail raises, c_after reads both; `-p
    b_fail.lr` is not in fail.ipynb's parameters cell. Returns (tmp, exit code, stdout,
    stderr)."""
    tmp = tmp_path_factory.mktemp("first")
    proc = subprocess.run([sys.executable, str(driver(tmp, FIXTURE_PLAN)),
                           *cli(tmp, "-p", "b_fail.lr=0.1")],
                          capture_output=True, text=True, timeout=300)
    return tmp, proc.returncode, proc.stdout, proc.stderr


CHATTER = ("[IPKernelApp]", "Input Notebook", "Output Notebook", "Working directory",
           "Executing notebook", "Passed unknown parameter", "Alternative text")


def test_console_shows_steps_and_errors_whole_and_the_log_the_rest(first_run):
    """STYLE 15: one line as each step starts and one as it ends, with the run's progress;
    the failing cell's traceback in full; kernel, papermill and nbconvert messages and the
    cells' output only in the log named at the start and at the end."""
    tmp, rc, out, err = first_run
    log_path = tmp / "reports" / "run_all.log"
    console = err + out
    lines = console.splitlines()
    assert rc == 1
    assert not [line for line in lines if line.startswith(CHATTER)], console
    for step in ("a_ok", "b_fail", "c_after"):
        assert len([ln for ln in lines if re.match(rf"start +{step} ", ln)]) == 1, console
        assert len([ln for ln in lines if re.match(rf"(ok|FAILED) +{step} in ", ln)]) == 1
    assert re.search(r"^ok +c_after in \S+ · 3/3 steps done · \S+ elapsed$", console, re.M)
    assert re.search(r"^ok +a_ok in \S+ · 1/3 steps done · \S+ elapsed · about \S+ left$",
                     console, re.M)
    failed = console[console.index("FAILED  b_fail"):]
    assert "ValueError: fixture failure for the test" in failed.splitlines()[0]
    assert "Traceback (most recent call last)" in failed  # IPython's, uncoloured
    assert 'raise ValueError("fixture failure for the test")' in failed and "\x1b[" not in failed
    assert "before the failure" not in console  # cell output: the log's
    assert "-p lr: not in the parameters cell of b_fail; passed to its setup() anyway" in console
    assert [ln for ln in err.splitlines() if ln.startswith("log: ")][0].startswith(
        f"log: {log_path} ")  # named at the start...
    assert out.splitlines()[-1] == f"log: {log_path}"  # ...and at the end
    log_text = log_path.read_text()
    for chatter in ("[IPKernelApp] WARNING", "Input Notebook", "Passed unknown parameter: lr",
                    "before the failure: visible in the partial report"):
        assert chatter in log_text
    assert "Alternative text" not in log_text  # ok.ipynb's image has its alt text


def test_parameter_notes_say_once_which_steps_lack_a_key():
    plan = fixture_plan()
    params = {s.name: {"epochs": 1, "lr": 0.1, "seed": 3} for s in plan}
    params["a_ok"].pop("seed")
    assert planning.parameter_notes(plan, params, FIXTURES) == [
        "-p lr: not in the parameters cell of a_ok, b_fail, c_after; passed to their setup() "
        "anyway", "-p seed: not in the parameters cell of b_fail, c_after; passed to their "
        "setup() anyway"]
    assert planning.parameters_cell(FIXTURES / "ok.ipynb") == set(planning.INJECTED) | {"epochs"}


def test_run_writes_reports_index_and_keeps_going_after_a_failure(first_run):
    tmp, rc, *_ = first_run
    reports = tmp / "reports"
    assert rc == 1
    st = state(tmp)
    assert [st[n]["status"] for n in ("a_ok", "b_fail", "c_after")] == ["ok", "failed", "ok"]
    for name in ("a_ok", "b_fail", "c_after"):
        assert (reports / f"{name}.ipynb").exists() and (reports / f"{name}.html").exists()
    assert not list(reports.glob(".*.partial.ipynb"))
    ok_html = (reports / "a_ok.html").read_text()
    assert "data:image/png;base64," in ok_html  # the figure is embedded
    fail_html = (reports / "b_fail.html").read_text()
    assert "before the failure" in fail_html and "fixture failure for the test" in fail_html
    assert st["b_fail"]["error"] == "ValueError: fixture failure for the test"
    index = (reports / "index.html").read_text()
    for name in ("a_ok", "b_fail", "c_after"):
        assert f'<a href="{name}.html">{name}</a>' in index
    assert "0.875" in index
    assert "SYNTHETIC DEMO DATA" in index and "synthetic demo data</span>" in index


def test_kernel_gets_parameters_environment_and_cwd(first_run):
    tmp, *_ = first_run
    res = json.loads((tmp / "reports" / "results" / "a_ok.json").read_text())
    assert res["env"] == {"CXR_QUIET": "1", "MPLBACKEND": "Agg"}
    assert Path(res["cwd"]) == FIXTURES and res["step"] == "a_ok" and res["epochs"] is None
    executed = json.loads((tmp / "reports" / "a_ok.ipynb").read_text())
    injected = [c for c in executed["cells"] if "injected-parameters" in
                c["metadata"].get("tags", [])]
    assert "profile = \"smoke\"" in "".join(injected[0]["source"])


def test_kernel_env_is_restored(monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "TkAgg")
    monkeypatch.delenv("CXR_QUIET", raising=False)
    with execute.kernel_env():
        assert (os.environ["MPLBACKEND"], os.environ["CXR_QUIET"]) == ("Agg", "1")
        assert os.environ["PYTHONPATH"].split(os.pathsep)[0] == str(run_all.ROOT)
    assert os.environ["MPLBACKEND"] == "TkAgg" and "CXR_QUIET" not in os.environ


def test_rerun_skips_unchanged_and_reruns_changed(first_run, tmp_path, monkeypatch, capsys):
    src, *_ = first_run
    shutil.copytree(src / "reports", tmp_path / "reports")  # output folders are not hashed
    freeze(monkeypatch, tmp_path)
    before = state(tmp_path)
    assert main(cli(tmp_path, "--list"), plan=fixture_plan()) == 0
    listing = capsys.readouterr().out
    assert "a_ok" in listing and "skip (unchanged)" in listing and "last run failed" in listing

    assert main(cli(tmp_path, "--only", "[ac]_*"), plan=fixture_plan()) == 0
    assert state(tmp_path) == before  # nothing ran, nothing recorded
    index = (tmp_path / "reports" / "index.html").read_text()
    assert index.count('class="skipped-unchanged">skipped-unchanged') == 2
    assert "last run: failed" in index  # b_fail, not selected this time

    assert main(cli(tmp_path, "-p", "a_ok.epochs=3", "--only", "[ac]_*"),
                plan=fixture_plan()) == 0
    changed = state(tmp_path)
    assert changed["a_ok"]["fingerprint"] != before["a_ok"]["fingerprint"]
    assert changed["c_after"]["fingerprint"] != before["c_after"]["fingerprint"]  # reads a_ok
    res = json.loads((tmp_path / "reports" / "results" / "a_ok.json").read_text())
    assert res["epochs"] == 3


def test_killed_run_resumes_after_the_last_completed_step(tmp_path, monkeypatch):
    freeze(monkeypatch, tmp_path)
    hold = tmp_path / "hold"
    hold.touch()
    script = driver(tmp_path, '[Step("first", "ok.ipynb"), Step("second", "hold.ipynb")]')
    proc = subprocess.Popen([sys.executable, str(script), *cli(tmp_path)],
                            env={**os.environ, "CXR_TEST_HOLD": str(hold)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            st_path = tmp_path / "reports" / ".run_state.json"
            if st_path.exists() and state(tmp_path).get("second", {}).get("status") == "running":
                break
            assert proc.poll() is None, "run_all exited before the kill"
            time.sleep(0.2)
        else:
            pytest.fail("the first step did not finish within 60 s")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        hold.unlink()  # the orphaned kernel's loop ends; its parent poller also exits it
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    reports = tmp_path / "reports"
    killed = state(tmp_path)
    assert killed["first"]["status"] == "ok" and killed["second"]["status"] == "running"
    assert not (reports / "second.html").exists() and not (reports / "second.ipynb").exists()

    assert main(cli(tmp_path), plan=[Step("first", "ok.ipynb"), Step("second", "hold.ipynb")]) == 0
    resumed = state(tmp_path)
    assert resumed["first"] == killed["first"]  # skipped, not re-run
    assert resumed["second"]["status"] == "ok" and (reports / "second.html").exists()
    assert "skipped-unchanged" in (reports / "index.html").read_text()


# --- steps side by side (--jobs) -----------------------------------------------------------
def test_default_plan_orders_side_by_side_steps_as_the_study_reads_them():
    plan = {s.name: s for s in planning.default_plan()}
    variants = [f"03_resnet_ablation_{v}" for v in planning.ABLATION_VARIANTS]
    for earlier, later in zip(variants, variants[1:]):  # "the ablation so far" reads them
        assert earlier in plan[later].needs
    assert all("01_preprocessing" in plan[s].needs for s in MODEL_STEPS)
    assert execute.auto_jobs("full", None) == 1 and execute.auto_jobs("demo", 2) == 1
    assert execute.auto_jobs("demo", None) == min(2, execute.usable_cpus())
    assert execute.auto_jobs("demo", None, steps=1) == 1


def test_jobs_run_steps_side_by_side_in_dependency_order(tmp_path, monkeypatch):
    """`o2` needs `o`; both finish while `h` still holds (one at a time, `h` would block
    them), and each kernel gets its share of the threads."""
    import threading

    freeze(monkeypatch, tmp_path)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    hold = tmp_path / "hold"
    hold.touch()
    monkeypatch.setenv("CXR_TEST_HOLD", str(hold))
    seen: list[bool] = []

    def release() -> None:
        done = tmp_path / "reports" / "results" / "o2.json"
        deadline = time.time() + 50
        while not done.exists() and time.time() < deadline:
            time.sleep(0.1)
        seen.append(done.exists())
        hold.unlink()

    watcher = threading.Thread(target=release)
    watcher.start()
    plan = [Step("h", "hold.ipynb"), Step("o", "ok.ipynb"), Step("o2", "ok.ipynb", needs=("o",))]
    try:
        assert main(cli(tmp_path, "--jobs", "2"), plan=plan) == 0
    finally:
        watcher.join()
    assert seen == [True], "o2 did not finish while h was still running"
    st = state(tmp_path)
    assert all(st[s]["status"] == "ok" for s in ("h", "o", "o2"))
    assert st["o2"]["started"] >= st["o"]["finished"]
    result = json.loads((tmp_path / "reports" / "results" / "o.json").read_text())
    assert result["threads"] == str(max(1, execute.usable_cpus() // 2))
    assert main(cli(tmp_path, "--jobs", "0"), plan=plan) == 2
