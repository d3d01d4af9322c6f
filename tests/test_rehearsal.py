"""`run_all.py --rehearse`: the full profile's plan at toy scale, end to end.

The session's rehearsal (conftest.smoke_run) runs every step with full's structure (3 seeds,
every source of the demo set, every ablation variant and transfer arm): what a GPU run
would find after hours (03's "ablation so far" bars broke on three seeds), it finds here.
The unit tests check how `--rehearse` resolves, without running anything.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import pytest

from conftest import ROOT, SMOKE_STEPS
from utils.config import PROFILES, make_config
from utils.study import plan as planning
from utils.study import rehearse
from utils.study.run_state import load_state


def _args(**given) -> argparse.Namespace:
    defaults = {"profile": None, "jobs": None, "reports_dir": ROOT / "reports",
                "checkpoint_dir": ROOT / "checkpoints"}
    return argparse.Namespace(**{**defaults, **given})


def test_rehearsal_profile_is_full_with_only_the_compute_turned_down() -> None:
    full, small = PROFILES["full"], PROFILES[rehearse.PROFILE]
    compute = {"image_size", "epochs", "nih_epochs", "max_steps_per_epoch", "batch_size",
               "max_images", "bootstrap", "pretrained", "num_workers", "cache"}
    assert {k: v for k, v in small.items() if k not in compute} == \
        {k: v for k, v in full.items() if k not in compute}
    assert set(small) - set(full) <= compute
    assert small["seeds"] == 3 and small["pretrained"] is False
    assert make_config({}, rehearse.PROFILE).seeds == 3
    # full's grid, with the CPU stand-ins of the big networks (the smoke profile's)
    for step in planning.default_plan():
        params = planning.resolve_params(step, {}, rehearse.PROFILE, {}, {})
        assert params.get("datasets") == step.params.get("datasets"), step.name
        assert params.get("model") == step.profile_params.get("smoke", {}).get(
            "model", step.params.get("model")), step.name


def test_rehearse_defaults_to_its_own_folders_and_two_jobs() -> None:
    args = _args()
    rehearse.apply(args)
    assert args.profile == "rehearsal" and args.jobs >= 1
    assert args.reports_dir == ROOT / "reports" / "rehearsal"
    assert args.checkpoint_dir == ROOT / "checkpoints" / "rehearsal"
    mine = _args(reports_dir=Path("/tmp/r"), jobs=1)
    rehearse.apply(mine)
    assert mine.reports_dir == Path("/tmp/r") and mine.jobs == 1
    with pytest.raises(planning.UsageError, match="--profile demo"):
        rehearse.apply(_args(profile="demo"))


def _results(reports: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (reports / "results").glob("*.json")}


@pytest.mark.notebooks
@pytest.mark.slow
def test_rehearsal_runs_every_step_of_the_full_plan(smoke_run) -> None:
    """Every step ok with its report; the console and the index say it was a rehearsal."""
    proc, reports, _, bundle = smoke_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "REHEARSAL" in proc.stderr
    state = load_state(reports / ".run_state.json")
    assert {s: state.get(s, {}).get("status") for s in SMOKE_STEPS} == \
        {s: "ok" for s in SMOKE_STEPS}
    for step in SMOKE_STEPS:
        assert (reports / f"{step}.html").is_file(), step
    assert "profile <b>rehearsal</b>" in (reports / "index.html").read_text()
    assert "profile=rehearsal" in (reports / "03_resnet_ablation_final.ipynb").read_text()
    assert bundle.is_file()


@pytest.mark.notebooks
@pytest.mark.slow
def test_rehearsal_compares_every_model_step_on_three_seeds_and_one_test_set(smoke_run) -> None:
    """07 holds every model step's runs with full's 3 seeds on each dataset it trained on,
    and every run of a dataset was tested on the same images."""
    _, reports, _, _ = smoke_run
    results = _results(reports)
    comparison = results["07_comparison"]
    datasets = comparison["datasets"]
    assert sorted(datasets) == ["kermany", "nih", "rsna"]  # datasets=all on the demo set
    rows = defaultdict(dict)
    for row in comparison["common"]:
        rows[row["step"]][row["dataset"]] = row
    for step in planning.default_plan():
        if step.name not in planning.MODEL_STEPS:
            continue
        expected = datasets if step.params.get("datasets") == "all" else ["kermany"]
        assert sorted(rows[step.name]) == sorted(expected), step.name
        for dataset in expected:
            row = rows[step.name][dataset]
            assert len(row["per_seed"]) == 3, (step.name, dataset, row["per_seed"])
    for dataset in datasets:
        prints = {r["test_fingerprint"] for r in comparison["common"] if r["dataset"] == dataset}
        assert len(prints) == 1, (dataset, prints)
        runs = [r for name, r in results.items() if name.startswith(planning.MODEL_STEPS)
                and r.get("data", {}).get("dataset") == dataset and "test" in r]
        assert {r["data"]["test_fingerprint"] for r in runs} == prints, dataset
    assert comparison["paired"], "no paired comparison between models"


@pytest.mark.notebooks
@pytest.mark.slow
def test_rehearsal_runs_the_gallery_and_every_transfer_arm(smoke_run) -> None:
    """08 scored the CAMs of the models; 09 compared full's stages (head, the last block,
    all) for each start, skipping only the weights this offline machine lacks."""
    _, reports, _, _ = smoke_run
    results = _results(reports)
    gallery = results["08_gradcam_gallery"]
    assert gallery["localisation"], "08 scored no CAM"
    assert {row["model"] for row in gallery["localisation"]} >= {"chexnet"}
    transfer = results["09_transfer"]
    trained = {(a["start"], a["trainable_from"]) for a in transfer["arms"]}
    assert ("random", "all") in trained
    assert {("nih", s) for s in ("head", "denseblock4", "all")} <= trained  # full's stages
    assert all(0.0 <= a["auroc"] <= 1.0 for a in transfer["arms"])


def test_full_networks_benchmark_runs_full_steps_offline_at_a_valid_size() -> None:
    """benchmarks.full_networks (outside CI: minutes) passes the plan's checks:
    its steps exist, full's real networks with random init, one seed, an accepted size."""
    from benchmarks import full_networks

    cmd = full_networks.command(Path("/tmp/x"), 64, 2)
    assert cmd[cmd.index("--profile") + 1] == "full"
    only = cmd[cmd.index("--only") + 1:cmd.index("-p")]
    plan = {s.name: s for s in planning.default_plan()}
    assert only == list(full_networks.NETWORKS) and set(only) <= set(plan)
    pairs = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-p"]
    global_, _ = planning.parse_overrides(pairs, list(plan.values()))
    assert global_["pretrained"] is False and global_["seeds"] == 1
    for name in only:
        params = planning.resolve_params(plan[name], {"profile": "full"}, "full", global_, {})
        planning.validate(plan[name], params)
        assert "model" not in plan[name].profile_params.get("full", {})  # the real network
    with pytest.raises(SystemExit, match="multiple of 16"):
        full_networks.command(Path("/tmp/x"), 40, 2)
