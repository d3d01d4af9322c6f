"""Warm-up and EMA of the weights (utils.training.schedules), as `fit` uses them."""
from __future__ import annotations

import math
import shutil

import pytest
import torch

from helpers_train import tiny_config, train_tiny
from utils.config import ConfigError, make_config
from utils.training.schedules import WarmupSchedule

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_warmup_is_linear_then_follows_the_cosine():
    f = WarmupSchedule(warm=4, total=12, cosine=True)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(8) == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert f(12) == pytest.approx(0.0) and WarmupSchedule(4, 12, cosine=False)(9) == 1.0


def test_fit_warms_up_per_batch():
    """Epoch 1 starts at lr/warm; the second epoch (after the warm-up) at the cosine's value."""
    cfg = tiny_config(epochs=2, warmup_epochs=1.0, lr=1e-2)  # 3 steps an epoch
    _, hist = train_tiny(cfg, None)
    assert hist.epochs[0]["lr"] == pytest.approx(1e-2 / 3)
    assert hist.epochs[1]["lr"] == pytest.approx(1e-2)  # cosine from the end of the warm-up


def test_ema_weights_are_what_fit_validates_and_returns():
    cfg = tiny_config(epochs=2, ema_decay=0.9, lr=1e-2)
    ema_model, ema_hist = train_tiny(cfg, None, restore_best=False)
    live_model, live_hist = train_tiny(tiny_config(epochs=2, lr=1e-2), None, restore_best=False)
    # same seed, same batches: training is identical, only what is validated differs
    assert [r["train_loss"] for r in ema_hist.epochs] == [r["train_loss"] for r in live_hist.epochs]
    assert ema_hist.epochs[-1]["val_loss"] != live_hist.epochs[-1]["val_loss"]
    a, b = ema_model.state_dict(), live_model.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())


def test_resume_with_ema_and_warmup_ends_where_an_uninterrupted_run_does(tmp_path, monkeypatch):
    """last.pt after epoch 1 is kept aside; resuming from it must give the same weights."""
    import utils.training.loop as train

    cfg = tiny_config(epochs=2, ema_decay=0.9, warmup_epochs=0.5, lr=1e-2)
    saved = train.atomic_torch_save

    def keep_epoch_one(obj, path):
        saved(obj, path)
        if path.name == "last.pt" and obj["epoch"] == 1:
            (tmp_path / "resume").mkdir()
            shutil.copy(path, tmp_path / "resume" / "last.pt")

    monkeypatch.setattr(train, "atomic_torch_save", keep_epoch_one)
    whole, _ = train_tiny(cfg, tmp_path / "whole", restore_best=False)
    monkeypatch.setattr(train, "atomic_torch_save", saved)
    resumed, hist = train_tiny(cfg, tmp_path / "resume", restore_best=False)
    assert hist.resumed_from == 1
    for k, v in whole.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


@pytest.mark.parametrize("params, fragment", [
    ({"ema_decay": 1.0}, "ema_decay=1.0 must be in"),
    ({"warmup_epochs": 0.5, "scheduler": "plateau"}, "warmup_epochs=0.5 works with"),
    ({"warmup_epochs": -1.0}, "warmup_epochs=-1.0 must be >= 0"),
])
def test_impossible_ema_and_warmup_values_are_refused(params, fragment):
    with pytest.raises(ConfigError, match=fragment):
        make_config(params)
