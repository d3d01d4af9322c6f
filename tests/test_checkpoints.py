"""A finished run leaves best.pt only (issue 13.12; none with `keep_best=false`): weights, settings, threshold, classes
and normalisation, without the optimizer state that only a resume needs; last.pt goes once
the run's evaluation has written the threshold, unless `keep_last`."""
from __future__ import annotations

import os

import pytest
import torch

from utils.training.checkpoint import checkpoint_bytes, load_checkpoint, load_model
from utils.config import make_config
from utils.data.demo import make_demo
from utils.study.notebook import REPO_ROOT
from utils.runtime import RunContext
from utils.runtime import seed_everything

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RESUME_ONLY = ("optimizer_state", "scheduler_state", "scaler_state", "rng_state")


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    os.environ.setdefault("CXR_QUIET", "1")
    return make_demo(tmp_path_factory.mktemp("demo"), seed=0, image_px=48, scale=0.3)


@pytest.mark.parametrize("keep_last,keep_best", [(False, True), (True, True), (False, False)])
def test_a_finished_run_keeps_best_pt_and_drops_last_pt(keep_last, keep_best, demo_root,
                                                        tmp_path):
    from utils.study.experiment import build_model, evaluate_and_record, prepare_data, train

    cfg = make_config({"data_root": str(demo_root), "model": "simple_cnn", "image_size": 32,
                       "epochs": 1, "max_steps_per_epoch": 1, "cache": False, "device": "cpu",
                       "step": "run", "checkpoint_dir": str(tmp_path / "ck"),
                       "reports_dir": str(tmp_path / "rep"), "keep_last": keep_last,
                       "keep_best": keep_best},
                      profile="smoke")
    seed_everything(cfg.seed)
    exp = prepare_data(cfg)
    exp.model = build_model(cfg, len(exp.class_names))
    ctx = RunContext(device=torch.device("cpu"), data_root=demo_root, synthetic=True,
                     repo_root=REPO_ROOT, environment={})
    train(exp, ctx)
    assert (tmp_path / "ck" / "run" / "last.pt").exists()  # until the run is evaluated
    results = evaluate_and_record(exp, ctx)
    if not keep_best:  # the demo's runs that no later step reads: nothing left, not even a folder
        assert not (tmp_path / "ck" / "run").exists()
        assert results["test"]["auroc"] is not None  # evaluated with best.pt before it went
        return
    files = sorted(p.name for p in (tmp_path / "ck" / "run").iterdir())
    assert files == (["best.pt", "last.pt"] if keep_last else ["best.pt"])
    assert results["distributed"] == {"world_size": 1, "nnodes": 1, "backend": "none"}
    best = load_checkpoint(tmp_path / "ck" / "run" / "best.pt")
    assert not set(RESUME_ONLY) & set(best)
    assert best["threshold"] == results["threshold"]["value"]
    assert best["class_names"] == ["Pneumonia"] and best["input_size"] == 32
    model, _ = load_model(tmp_path / "ck" / "run" / "best.pt", device="cpu")  # inference
    assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 1)
    assert checkpoint_bytes(tmp_path / "ck", "run") == sum(
        (tmp_path / "ck" / "run" / f).stat().st_size for f in files)
    assert checkpoint_bytes(tmp_path / "ck", "no_such_run") == 0
