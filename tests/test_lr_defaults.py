"""The learning rate follows the starting point unless set: 1e-3 from random init (the
study's from-scratch rate), 1e-4 fine-tuning; training uses it and the results say why."""
from __future__ import annotations

import dataclasses
import json

import pytest

from helpers_train import tiny_config, train_tiny
from utils.config import LR_FINE_TUNE, LR_FROM_SCRATCH, PROFILES, ConfigError, RunConfig, make_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("start, expected, words", [
    ({"pretrained": False}, LR_FROM_SCRATCH, "random init"),
    ({"pretrained": True}, LR_FINE_TUNE, "fine-tuning pretrained"),
    ({"pretrained": False, "init_checkpoint": "checkpoints/02_chexnet_nih/best.pt"},
     LR_FINE_TUNE, "init_checkpoint=checkpoints/02_chexnet_nih/best.pt"),
])
def test_auto_rate_follows_the_starting_point(start, expected, words):
    for profile in PROFILES:  # no profile pins a rate: the full profile used to say 1e-4
        lr, reason = make_config(start, profile=profile).learning_rate()
        assert (lr, reason.startswith("auto")) == (expected, True) and words in reason


@pytest.mark.parametrize("pretrained, fine_tuning", [
    ("none", False), ("None", False), ("", False), ("imagenet", True),
    ("xrv:densenet121-res224-all", True), (True, True), (False, False)])
def test_named_weight_sources_count_as_fine_tuning_except_none(pretrained, fine_tuning):
    """`pretrained` may name a source (the weights helper's "imagenet" / "xrv:..." / "none")."""
    cfg = RunConfig(pretrained=pretrained)
    assert cfg.fine_tuning() is fine_tuning
    assert cfg.learning_rate()[0] == (LR_FINE_TUNE if fine_tuning else LR_FROM_SCRATCH)


def test_an_explicit_rate_wins_and_a_negative_one_is_refused():
    assert make_config({"lr": 3e-4, "pretrained": False}).learning_rate() == \
        (3e-4, "set explicitly (lr)")
    assert RunConfig().lr == 0.0 and all("lr" not in p for p in PROFILES.values())
    with pytest.raises(ConfigError, match="lr=-0.1 must be >= 0"):
        make_config({"lr": -0.1})


def test_a_copied_config_gets_its_own_start_s_rate():
    """02 part B and the transfer notebook copy the config with another start."""
    scratch = make_config({"pretrained": False}, profile="demo")
    assert dataclasses.replace(scratch, init_checkpoint="a.pt").learning_rate()[0] == LR_FINE_TUNE


@pytest.mark.parametrize("start, expected", [({}, LR_FROM_SCRATCH),
                                             ({"init_checkpoint": "nih.pt"}, LR_FINE_TUNE)])
def test_fit_trains_at_the_resolved_rate(start, expected):
    _, hist = train_tiny(tiny_config(lr=0.0, scheduler="none", **start), None)
    assert hist.epochs[0]["lr"] == pytest.approx(expected)


def test_pretrained_false_without_lr_trains_at_1e3_and_the_results_say_so(tmp_path, monkeypatch):
    """The issue's check, end to end on the generated demo set, with the full profile."""
    from utils.data.demo import make_demo
    from utils.study.experiment import run_experiment
    from utils.runtime import RunContext

    root = make_demo(tmp_path / "demo", scale=0.2)
    cfg = make_config({"pretrained": False, "model": "simple_cnn", "image_size": 32,
                       "epochs": 1, "max_steps_per_epoch": 1, "batch_size": 8,
                       "max_images": 24, "cache": False, "num_workers": 0, "bootstrap": 0,
                       "device": "cpu", "data_root": str(root), "step": "lr_check",
                       "reports_dir": str(tmp_path / "reports"),
                       "checkpoint_dir": str(tmp_path / "ckpt")}, profile="full")
    ctx = RunContext(device="cpu", data_root=root, synthetic=True, repo_root=tmp_path,
                     environment={})
    run_experiment(cfg, ctx)
    saved = json.loads((tmp_path / "reports" / "results" / "lr_check.json").read_text())
    assert saved["training"]["lr"] == LR_FROM_SCRATCH
    assert "random init" in saved["training"]["lr_reason"]
    assert saved["history"][0]["lr"] == LR_FROM_SCRATCH
    assert saved["config"]["lr"] == 0.0  # the config keeps "auto"; training says what it used
