"""A step's grid on the generated demo data: every (dataset × seed) run trained and tested on
its source's one test split, scored on the other sources' test splits, seeds reproducible."""
from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from utils.config import make_config
from utils.data.demo import make_demo
from utils.study.experiment import build_model, train
from utils.study.grid import StepGrid
from utils.study.notebook import setup

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    os.environ.setdefault("CXR_QUIET", "1")
    return make_demo(tmp_path_factory.mktemp("demo"), seed=0, image_px=32, scale=0.3)


def _cfg(root, out, **extra):
    params = {"profile": "smoke", "data_root": str(root), "model": "simple_cnn",
              "step": "03_resnet_ablation_cnn", "dataset": "kermany", "image_size": 32,
              "reports_dir": str(out / "reports"), "checkpoint_dir": str(out / "ck"), **extra}
    return setup(params, verbose=False)


def _run(cfg, ctx) -> StepGrid:
    grid = StepGrid(cfg, ctx)
    exp = grid.prepare(grid.primary)
    exp.model = build_model(grid.primary, num_classes=1)
    train(exp, ctx)
    grid.evaluate(exp)
    grid.run_rest()
    return grid


@pytest.fixture(scope="module")
def grid(demo_root, tmp_path_factory):
    return _run(*_cfg(demo_root, tmp_path_factory.mktemp("grid"), datasets="kermany,rsna",
                      seeds=2))


def test_every_run_is_written_with_its_seed_and_the_shared_test_set(grid):
    names = [r.step for r in grid.runs]
    assert names == ["03_resnet_ablation_cnn", "03_resnet_ablation_cnn.s43",
                     "03_resnet_ablation_cnn.rsna", "03_resnet_ablation_cnn.rsna.s43"]
    folder = os.path.join(grid.cfg.reports_dir, "results")
    results = {n: json.loads(open(os.path.join(folder, f"{n}.json")).read()) for n in names}
    assert [results[n]["seed"] for n in names] == [42, 43] * 2
    assert {results[n]["plan_step"] for n in names} == {"03_resnet_ablation_cnn"}
    by_dataset = {}
    for res in results.values():
        by_dataset.setdefault(res["data"]["dataset"], set()).add(res["data"]["test_fingerprint"])
    assert all(len(fps) == 1 for fps in by_dataset.values()), by_dataset  # one test set each
    assert len({fp for fps in by_dataset.values() for fp in fps}) == 2


def test_each_run_is_scored_on_the_other_sources_test_splits(grid):
    own = {res["data"]["dataset"]: res["data"]["test_fingerprint"]
           for res in grid.results.values()}
    own["nih"] = next(row["test_fingerprint"] for row in
                      next(iter(grid.results.values()))["external"] if row["dataset"] == "nih")
    for name, res in grid.results.items():
        ext = {row["dataset"]: row for row in res["external"]}
        assert set(ext) == {"kermany", "rsna", "nih"} - {res["data"]["dataset"]}, name
        for dataset, row in ext.items():
            assert row["test_fingerprint"] == own[dataset]  # the same images as at home
            assert row["threshold"] == res["threshold"]["value"]  # its own val threshold
            assert 0 <= row["auroc"] <= 1 and len(row["auroc_ci"]) == 2
        pred = pd.read_csv(os.path.join(grid.cfg.reports_dir, "results",
                                        f"{name}_predictions.csv"))
        assert set(pred["split"]) == {"val", "test", "external"}
        assert sorted(pred.loc[pred["split"] == "external", "dataset"].unique()) == sorted(ext)
    assert not grid.table().empty


def test_same_seed_same_metrics_other_seed_other_metrics(demo_root, tmp_path):
    runs = [_run(*_cfg(demo_root, tmp_path / name, seed=seed))
            for name, seed in (("a", 0), ("b", 0), ("c", 1))]
    tests = [next(iter(g.results.values()))["test"] for g in runs]
    keys = ("auroc", "f1", "accuracy", "confusion_matrix")
    assert [tests[0][k] for k in keys] == [tests[1][k] for k in keys]
    # seeds 0 and 1: the runs are named by the seed's value (`03_resnet_ablation_cnn.s0`)
    assert [g.primary.step for g in runs] == ["03_resnet_ablation_cnn.s0"] * 2 + \
        ["03_resnet_ablation_cnn.s1"]
    probs = [pd.read_csv(os.path.join(g.cfg.reports_dir, "results",
                                      f"{g.primary.step}_predictions.csv"))["prob"]
             for g in runs]
    assert probs[0].equals(probs[1]) and not probs[0].equals(probs[2])


def test_step_alone_has_no_grid_and_absent_source_is_named(demo_root, tmp_path):
    cfg = make_config({"dataset": "kermany", "data_root": str(demo_root)}, "smoke")
    from utils.study.runs import run_configs

    assert [r.step for r in run_configs(cfg, demo_root)] == [""]
    with pytest.raises(FileNotFoundError, match="not found"):
        run_configs(make_config({"dataset": "kermany", "datasets": "kermany,rsna"}, "smoke"),
                    tmp_path)
