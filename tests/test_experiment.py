"""One run end to end on tiny demo data: precise BN only where it was measured to help, and
after it rewrites best.pt's BN statistics every recorded validation number describes the
weights that were saved (best.pt's history and best_score, the results JSON)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from utils.checkpoint import load_checkpoint, load_model
from utils.config import make_config
from utils.data.demo import make_demo
from utils.experiment import Experiment, evaluate_and_record, needs_precise_bn, run_experiment
from utils.losses import build_loss
from utils.models import create_model
from utils.notebook import RunContext
from utils.train import validation_scores

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """simple_cnn (BatchNorm, random init) for two smoke epochs on the demo's Kermany set."""
    os.environ.setdefault("CXR_QUIET", "1")
    tmp = tmp_path_factory.mktemp("run")
    root = make_demo(tmp / "demo", seed=0, image_px=48, scale=0.3)
    cfg = make_config({"model": "simple_cnn", "dataset": "kermany", "data_root": str(root),
                       "checkpoint_dir": str(tmp / "ckpt"), "reports_dir": str(tmp / "rep"),
                       "step": "precise_bn_test", "device": "cpu", "epochs": 2,
                       "max_images": 64, "cache": False, "bootstrap": 0}, profile="smoke")
    ctx = RunContext(device=torch.device("cpu"), data_root=root, synthetic=True,
                     repo_root=tmp, environment={})
    return run_experiment(cfg, ctx), ctx


def _best_row(history: dict) -> dict:
    return next(r for r in history["epochs"] if r["epoch"] == history["best_epoch"])


def test_history_row_describes_the_recalibrated_weights_in_best_pt(run):
    exp, _ = run
    best = exp.checkpoint / "best.pt"
    ckpt = load_checkpoint(best)
    row = _best_row(ckpt["history"])
    assert row["precise_bn"] is True
    model, _ = load_model(best, device="cpu")  # the weights that exist now
    loss_fn = build_loss(exp.cfg, exp.loaders["train"].dataset.labels)
    now = validation_scores(model, exp.loaders["val"], loss_fn, "cpu", amp=exp.cfg.amp)
    for name, value in now.items():
        assert row[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    assert ckpt["best_score"] == row[exp.cfg.monitor]
    # what fit measured for the weights before recalibration is kept, under its own name
    assert row["val_loss_as_trained"] != pytest.approx(row["val_loss"])
    path = Path(exp.cfg.reports_dir) / "results" / f"{exp.cfg.step}.json"
    results = json.loads(path.read_text())
    recorded = _best_row({"epochs": results["history"], **results["training"]})
    for name in (*now, "val_loss_as_trained"):
        assert recorded[name] == pytest.approx(row[name]), name
    assert results["training"]["best_score"] == pytest.approx(row[exp.cfg.monitor])


def test_evaluating_again_keeps_the_as_trained_values(run):
    exp, ctx = run
    first = _best_row(load_checkpoint(exp.checkpoint / "best.pt")["history"])
    exp.model = create_model("simple_cnn", 1, image_size=exp.cfg.image_size)  # as trained
    evaluate_and_record(exp, ctx)
    again = _best_row(load_checkpoint(exp.checkpoint / "best.pt")["history"])
    assert again["val_loss_as_trained"] == first["val_loss_as_trained"]


def test_precise_bn_only_for_a_whole_network_from_random_init(tmp_path):
    def exp_for(model, **cfg):
        return Experiment(cfg=make_config(cfg, profile="smoke"), manifest=None, loaders={},
                          class_names=["Pneumonia"], model=model)

    scratch = create_model("resnet18", 1, image_size=32)
    assert needs_precise_bn(exp_for(scratch))
    assert not needs_precise_bn(exp_for(scratch, trainable_from="layer4"))
    path = tmp_path / "source.pt"
    torch.save(scratch.state_dict(), path)
    tuned = create_model("resnet18", 1, image_size=32, init_checkpoint=str(path))
    assert not needs_precise_bn(exp_for(tuned, init_checkpoint=str(path)))
    assert not needs_precise_bn(exp_for(create_model("vit_tiny", 1, image_size=32)))  # no BN
