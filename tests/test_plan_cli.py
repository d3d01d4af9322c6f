"""run_all.py --plan, the kaggle/colab profiles, profile=auto on a platform, the session guard
and the planned seconds the index shows (utils/study/budget.py on utils/study/cost.py)."""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

from run_all import main
from utils.config import make_config
from utils.evaluation.questions import QUESTIONS, ROLES
from utils.study import budget, budget_hooks, cost, execute, run_sizes
from utils.study.plan import Step, default_plan

FIXTURES = Path(__file__).parent / "fixtures"
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.fixture
def no_data(monkeypatch, tmp_path):
    """No real data (the synthetic demo is "found") and no hosted platform in the env."""
    for var in ("KAGGLE_KERNEL_RUN_TYPE", "COLAB_RELEASE_TAG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(execute, "resolve_data", lambda value: (tmp_path / "none", True))
    return tmp_path


def plan_out(capsys, tmp: Path, *argv: str) -> tuple[int, str, str]:
    rc = main(["--plan", "--reports-dir", str(tmp / "reports"), *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def total_hours(out: str) -> float:
    return float(re.search(r"^total: .*?\(([\d.]+) h\)", out, re.M).group(1))


def test_full_on_t4_without_data_prices_the_published_sizes(no_data, capsys):
    rc, out, _ = plan_out(capsys, no_data, "--profile", "full", "--gpu", "t4")
    assert rc == 0
    assert "ASSUMED from the published Kaggle sizes" in out and "NIH 86,524" in out
    table = [line for line in out.splitlines() if line.startswith(("step ", "0", "TOTAL"))]
    assert len({len(line) for line in table}) == 1  # aligned: every row as wide as the head
    assert any(line.startswith("05_vit ") for line in table)
    # 3 seeds x 3 sources of ~73,000 NIH films at 224 px: days of T4, not hours
    assert total_hours(out) > 24
    h100 = plan_out(capsys, no_data, "--profile", "full", "--gpu", "h100")[1]
    assert total_hours(h100) < total_hours(out) / 5  # 3350 vs 320 GB/s


@pytest.mark.parametrize("profile,device", [("kaggle", "t4 x2"), ("colab", "t4 x1")])
def test_hosted_profiles_fit_one_session(no_data, capsys, profile, device):
    rc, out, _ = plan_out(capsys, no_data, "--profile", profile)
    assert rc == 0 and f"on {device}" in out
    assert 4 < total_hours(out) <= budget.PLAN_HOURS
    assert "WARNING: the plan needs" not in out and f"fits one {profile.capitalize()}" in out


@pytest.mark.parametrize("argv,named", [
    (["--gpu", "v100"], "'v100' is not one of t4, l4, p100, a100, h100, cpu"),
    (["--only", "99_nope"], "--only '99_nope' matches no step"),
    (["-p", "nope=1"], "unknown parameter 'nope'"),
    (["-p", "99_x.epochs=1"], "no step named '99_x'"),
])
def test_bad_values_are_one_error_naming_them(no_data, capsys, argv, named):
    rc, out, err = plan_out(capsys, no_data, "--profile", "full", *argv)
    assert rc == 2 and named in err and "TOTAL" not in out


def test_p100_only_with_a_torch_build_for_it(no_data, capsys):
    import torch

    rc, out, err = plan_out(capsys, no_data, "--profile", "full", "--gpu", "p100")
    if "sm_60" in torch.cuda.get_arch_list() or not torch.cuda.get_arch_list():
        assert rc == 0 and "TOTAL" in out
    else:
        assert rc == 2 and "capability 6.0" in err and "cu126" in err


def test_the_plan_warns_when_it_outlasts_the_platform_session(no_data, capsys):
    rc, out, _ = plan_out(capsys, no_data, "--profile", "full", "--platform", "colab")
    assert rc == 0 and "WARNING: the plan needs" in out and "Colab session (12 h)" in out


# --- the profiles keep the study's questions and test sets ----------------------------------
@pytest.mark.parametrize("profile", ["kaggle", "colab"])
def test_hosted_profiles_keep_both_questions_answerable(profile):
    """Every architecture of both questions trains on a common source with >= 2 seeds (the
    paired DeLong with the seeds' variance needs two), on full's splits."""
    plan = default_plan()
    base = {"profile": profile, "data_root": "", "reports_dir": "r", "checkpoint_dir": "c"}
    from utils.study.plan import resolve_params

    params = {s.name: resolve_params(s, base, profile, {}, {}) for s in plan}
    priced = budget.price_plan(plan, params, NOTEBOOKS, None, "t4", 2)
    by_step = {s.step: s.runs for s in priced.steps}
    for question, roles in QUESTIONS.items():
        steps = [ROLES[r].step for r in ("chexnet", *roles)]
        seeds = [{d: sum(1 for r in by_step[s] if r.dataset == d and r.run.split(".")[0] == s
                         and "_nih" not in r.run) for d in run_sizes.PUBLISHED} for s in steps]
        common = [d for d in run_sizes.PUBLISHED if all(n[d] >= 2 for n in seeds)]
        assert common, (question, seeds)
    cfg, full = make_config({}, profile), make_config({}, "full")
    for key in ("val_fraction", "test_fraction", "split_seed", "max_images"):
        assert getattr(cfg, key) == getattr(full, key), key
    assert cfg.max_train_images > 0 and cfg.image_size == full.image_size


@pytest.mark.parametrize("dataset", ["kermany", "rsna"])
def test_hosted_profiles_test_on_full_s_test_set(dataset, tmp_path_factory):
    from utils.data.dataset import load_manifest, test_fingerprint
    from utils.data.demo import make_demo

    root = make_demo(tmp_path_factory.mktemp("demo"), seed=0, image_px=32, scale=0.3)
    prints, trains = {}, {}
    for profile in ("full", "kaggle", "colab"):
        cap = 20 if profile != "full" else 0
        m = load_manifest(make_config({"dataset": dataset, "data_root": str(root),
                                       "max_train_images": cap}, profile))
        prints[profile] = test_fingerprint(m)
        trains[profile] = int((m["split"] == "train").sum())
        assert (m["split"] == "val").sum() > 0
    assert len(set(prints.values())) == 1, prints
    assert trains["kaggle"] == trains["colab"] == 20 < trains["full"]


def test_the_plan_counts_what_the_runs_leak_guard_leaves(tmp_path_factory):
    """RSNA ⊂ NIH: the plan's training sizes are the run's own (its loader, then the rows
    `utils.data.overlap` drops after the splits), not the split's; epochs in whole batches."""
    import dataclasses

    from utils.data.dataset import load_manifest
    from utils.data.demo import make_demo
    from utils.data.overlap import cross_source_exclusion

    root = make_demo(tmp_path_factory.mktemp("demo"), seed=0, image_px=32, scale=0.3)
    cfg = make_config({"data_root": str(root), "dataset": "rsna"}, "full")
    runs = {d: load_manifest(dataclasses.replace(cfg, dataset=d)) for d in ("rsna", "nih")}
    for dataset, manifest in runs.items():
        kept = cross_source_exclusion(dataset, runs, root)(manifest)
        train = int((kept["split"] == "train").sum())
        plain = int((manifest["split"] == "train").sum())
        sizes, source = run_sizes.split_sizes(dataclasses.replace(cfg, dataset=dataset), root)
        assert source == "found" and sizes["train"] == train < plain, (dataset, train, plain)
    assert run_sizes.epoch_images(dataclasses.replace(cfg, batch_size=16), 371) == 368


# --- profile=auto on a platform --------------------------------------------------------------
def test_platform_detection_and_the_auto_profile(monkeypatch):
    assert budget.detect_platform({}, {}) == (None, "")
    assert budget.detect_platform({"KAGGLE_KERNEL_RUN_TYPE": "Interactive"}, {})[0] == "kaggle"
    assert budget.detect_platform({"COLAB_RELEASE_TAG": "r"}, {})[0] == "colab"
    assert budget.detect_platform({}, {"google.colab": object()})[0] == "colab"
    assert budget.auto_profile(True, "kaggle")[0] == "demo"  # synthetic data: the demo
    profile, why = budget.auto_profile(False, "kaggle", "KAGGLE_KERNEL_RUN_TYPE is set")
    assert profile == "kaggle" and "KAGGLE_KERNEL_RUN_TYPE" in why and "12-hour" in why
    assert budget.auto_profile(False, None)[0] == "full"
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab")
    args = argparse.Namespace(profile=None, platform=None)
    assert budget_hooks.choose_profile(args, synthetic=False)[0] == "colab"
    args.profile = "full"
    assert budget_hooks.choose_profile(args, synthetic=False) == ("full", "")


# --- the session guard and planned vs actual -------------------------------------------------
def _fixture_run(monkeypatch, tmp: Path, *extra: str) -> int:
    code = tmp / "code"
    code.mkdir(exist_ok=True)
    (code / "lib.py").write_text("x = 1\n")
    monkeypatch.setattr(execute, "CODE_DIR", code)
    monkeypatch.setattr(execute, "resolve_data", lambda value: (FIXTURES / "no-data", True))
    return main(["--notebooks-dir", str(FIXTURES), "--reports-dir", str(tmp / "reports"),
                 "--checkpoint-dir", str(tmp / "ckpt"), "--profile", "smoke", *extra],
                plan=[Step("a_ok", "ok.ipynb")])


def test_session_guard_refuses_a_run_longer_than_the_session(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    # 3.6 s < one step's 15 s (budget's own name: the session's stop time keeps 12 h)
    monkeypatch.setattr(budget, "SESSION_HOURS", {**cost.SESSION_HOURS, "kaggle": 0.001})
    assert _fixture_run(monkeypatch, tmp_path, "--platform", "kaggle") == 2
    err = capsys.readouterr().err
    assert "more than one Kaggle session (0.001 h)" in err and "--ignore-session-limit" in err
    assert not (tmp_path / "reports" / "a_ok.html").exists()  # nothing ran
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")  # detected, not given: the same
    assert _fixture_run(monkeypatch, tmp_path) == 2
    assert _fixture_run(monkeypatch, tmp_path, "--ignore-session-limit") == 0
    assert (tmp_path / "reports" / "a_ok.html").exists()
    # the index shows the plan's seconds (this machine's device) beside the duration
    entry = json.loads((tmp_path / "reports" / ".run_state.json").read_text())["steps"]["a_ok"]
    assert entry["planned_s"] == pytest.approx(cost.STEP_OVERHEAD_S) and entry["duration_s"] > 0
    assert entry["planned_on"].startswith(("cpu", "t4", "l4", "a100", "h100"))
    page = (tmp_path / "reports" / "index.html").read_text()
    assert "<th" in page and ">planned<" in page and 'data-v="15.0"' in page


def test_a_run_that_fits_is_not_held(monkeypatch, tmp_path):
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    assert _fixture_run(monkeypatch, tmp_path, "--platform", "colab") == 0
