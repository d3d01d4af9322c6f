"""Precise BN after training: kept only when validation says it helps, and every recorded
validation number describes the weights best.pt holds (its history and best_score, the
results JSON), on a tiny run of the demo data and on hand-made BN models."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import utils.training.precise_bn as pbn
from utils.training.checkpoint import load_checkpoint, load_model
from utils.config import make_config
from utils.data.demo import make_demo
from utils.study.experiment import evaluate_and_record, run_experiment
from utils.training.losses import build_loss
from utils.runtime import RunContext
from utils.training.precise_bn import precise_bn_if_better, validation_scores

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _demo_run(tmp, monkeypatch, kept: bool):
    """simple_cnn (BatchNorm, random init) for two smoke epochs on the demo's Kermany set,
    with the validation verdict forced, so both ways of recording are exercised."""
    monkeypatch.setenv("CXR_QUIET", "1")
    monkeypatch.setattr(pbn, "_better", lambda new, old, monitor: kept)
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


def _recorded(exp) -> tuple[dict, dict]:
    """(best.pt's best row and best_score, the results JSON's best row and best_score)"""
    ckpt = load_checkpoint(exp.checkpoint / "best.pt")
    results = json.loads((Path(exp.cfg.reports_dir) / "results" /
                          f"{exp.cfg.step}.json").read_text())
    return ((_best_row(ckpt["history"]), ckpt["best_score"]),
            (_best_row({"epochs": results["history"], **results["training"]}),
             results["training"]["best_score"]))


@pytest.mark.parametrize("kept", [True, False], ids=["kept", "rejected"])
def test_recorded_val_scores_describe_the_weights_in_best_pt(tmp_path, monkeypatch, kept):
    exp, ctx = _demo_run(tmp_path, monkeypatch, kept)
    model, _ = load_model(exp.checkpoint / "best.pt", device="cpu")  # the weights that exist
    loss_fn = build_loss(exp.cfg, exp.loaders["train"].dataset.labels)
    now = validation_scores(model, exp.loaders["val"], loss_fn, "cpu", amp=exp.cfg.amp)
    for row, best_score in _recorded(exp):
        assert row["precise_bn"] is kept
        for name, value in now.items():
            assert row[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
        assert best_score == pytest.approx(row[exp.cfg.monitor])
        other = "as_trained" if kept else "precise_bn"  # the other weights' scores, named
        assert row[f"val_loss_{other}"] != pytest.approx(row["val_loss"])
    if kept:  # evaluating again keeps fit's own values under their name
        first = _recorded(exp)[0][0]
        evaluate_and_record(exp, ctx)
        assert _recorded(exp)[0][0]["val_loss_as_trained"] == first["val_loss_as_trained"]


# --- the verdict on hand-made data: BN statistics that help, and ones that hurt ----------

def _loader(x, y):
    return DataLoader(TensorDataset(x, y, torch.zeros(len(x))), batch_size=16)


def _bn_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(1), nn.Linear(1, 1))
    with torch.no_grad():
        model[2].weight.fill_(3.0)
        model[2].bias.zero_()
    return model


def test_precise_bn_kept_when_validation_improves_and_put_back_when_not():
    g = torch.Generator().manual_seed(0)
    y = (torch.rand(64, 1, generator=g) < 0.5).float()
    x = (torch.randn(64, 1, generator=g) + 2 * y - 1).view(64, 1, 1, 1)  # centred, var ~2
    cfg = make_config({"monitor": "val_loss"}, profile="smoke")
    loss = nn.BCEWithLogitsLoss()
    model = _bn_model()
    with torch.no_grad():  # stale statistics, far from the data's
        model[1].running_mean.fill_(5.0)
    good = precise_bn_if_better(model, {"train": _loader(x, y), "val": _loader(x, y)}, cfg,
                                loss_fn=loss)
    assert good["tried"] and good["kept"]
    assert good["after"]["val_loss"] < good["before"]["val_loss"]
    assert abs(float(model[1].running_mean)) < 0.5   # recalibrated statistics stay

    model = _bn_model()
    with torch.no_grad():  # statistics that fit the validation data
        model[1].running_mean.zero_()
        model[1].running_var.fill_(2.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    shifted = {"train": _loader(x + 4.0, y), "val": _loader(x, y)}  # train looks different
    bad = precise_bn_if_better(model, shifted, cfg, loss_fn=loss)
    assert bad["tried"] and not bad["kept"]
    assert bad["after"]["val_loss"] > bad["before"]["val_loss"]
    for key, value in model.state_dict().items():   # put back as it was
        torch.testing.assert_close(value, before[key])


def test_precise_bn_not_tried_without_bn_or_with_a_frozen_backbone():
    loaders = {"train": [], "val": []}
    loss = nn.BCEWithLogitsLoss()
    cfg = make_config({}, profile="smoke")
    assert not precise_bn_if_better(nn.Linear(1, 1), loaders, cfg, loss_fn=loss)["tried"]
    frozen = make_config({"trainable_from": "head"}, profile="smoke")
    assert not precise_bn_if_better(_bn_model(), loaders, frozen)["tried"]  # no loss built


def test_precise_bn_is_judged_by_the_validation_loss_not_the_monitor(monkeypatch):
    """Recomputed BN statistics that fix calibration (validation BCE 3.00 -> 0.11) are kept
    even when the rank metric dips (AUROC 0.995 -> 0.988): a fixed threshold needs them."""
    import torch
    from torch import nn

    from utils.training import precise_bn

    scores = iter([{"val_loss": 3.0, "val_auroc": 0.995, "val_f1": 0.57},
                   {"val_loss": 0.11, "val_auroc": 0.988, "val_f1": 0.99}])
    monkeypatch.setattr(precise_bn, "validation_scores", lambda *a, **k: next(scores))
    monkeypatch.setattr("utils.training.loop.recalibrate_batchnorm", lambda *a, **k: True)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    cfg = make_config({"monitor": "val_auroc"}, profile="smoke")
    out = precise_bn.precise_bn_if_better(model, {"train": None, "val": None}, cfg, "cpu",
                                          loss_fn=nn.BCEWithLogitsLoss())
    assert out["tried"] and out["kept"]
    assert torch.isfinite(model[1].running_var).all()
