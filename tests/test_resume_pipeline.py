"""Exact resume through the real pipeline, for each kind of training step (issue 13.11).

The demo `run_all.py` killed during `02_chexnet_nih`'s 2nd epoch resumed but ended with
other weights than an uninterrupted run: albumentations keeps a numpy Generator and a
`random.Random` *per transform* (seeded once by `make_loaders`), which no checkpoint held,
so the resumed epochs drew other flips and rotations. Here each kind of step trains on the
generated demo data through `utils.study.experiment` (manifest -> make_loaders with augmentation
and the step's sampler -> build_model -> train), is interrupted mid-epoch 2 (the loss raises,
as a kill would stop it, after `last.pt` of epoch 1 was written), is resumed in fresh
objects, and must end with exactly the weights of an uninterrupted run (CPU, num_workers=0).
"""
from __future__ import annotations

import os

import pytest
import torch

from utils.training.checkpoint import load_checkpoint
from utils.config import make_config
from utils.data.demo import make_demo
from utils.training.losses import build_loss as real_build_loss
from utils.study.notebook import REPO_ROOT
from utils.runtime import RunContext
from utils.runtime import seed_everything

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KINDS = {  # the two kinds of training step in the plan, with their samplers
    "binary_balanced": {"dataset": "kermany", "sampler": "balanced"},
    "nih_multilabel_capped": {"dataset": "nih", "task": "multilabel", "sampler": "capped",
                              "sampler_cap": 6},
}


class Interrupt(Exception):
    """Stands for the kill: raised inside the training step, like a signal would stop it."""


class _FnLoss(torch.nn.Module):
    """A loss module around a function (fit moves the loss to the device)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, logits, target):
        return self.fn(logits, target)


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    os.environ.setdefault("CXR_QUIET", "1")
    return make_demo(tmp_path_factory.mktemp("demo"), seed=0, image_px=48, scale=0.3)


def _cfg(root, tmp, **kind):
    return make_config({"data_root": str(root), "model": "simple_cnn", "image_size": 32,
                        "epochs": 3, "batch_size": 8, "max_steps_per_epoch": 3,
                        "augmentation": "basic", "dropout": 0.2, "cache": False,
                        "num_workers": 0, "device": "cpu", "seed": 3, "step": "resume",
                        "checkpoint_dir": str(tmp), "reports_dir": str(tmp / "reports"),
                        **kind}, profile="smoke")


def _train(cfg, root, monkeypatch, stop_at_call: int | None = None):
    """One notebook's training cells; `stop_at_call`: the loss raises on that call."""
    import utils.training.losses
    from utils.study.experiment import build_model, prepare_data, train

    def build_loss(cfg, labels):
        loss, calls = real_build_loss(cfg, labels), [0]

        def forward(logits, target):
            if torch.is_grad_enabled():
                calls[0] += 1
                if calls[0] == stop_at_call:
                    raise Interrupt(f"stopped on training step {calls[0]}")
            return loss(logits, target)
        return _FnLoss(forward)

    monkeypatch.setattr(utils.training.losses, "build_loss", build_loss)
    seed_everything(cfg.seed)  # as the notebook's setup cell does
    exp = prepare_data(cfg)
    exp.model = build_model(cfg, len(exp.class_names))
    ctx = RunContext(device=torch.device("cpu"), data_root=root, synthetic=True,
                     repo_root=REPO_ROOT, environment={})
    return exp, train(exp, ctx)


@pytest.mark.parametrize("kind", list(KINDS))
def test_interrupted_step_resumes_to_the_uninterrupted_weights(kind, demo_root, tmp_path,
                                                               monkeypatch):
    full_cfg = _cfg(demo_root, tmp_path / "full", **KINDS[kind])
    full, h_full = _train(full_cfg, demo_root, monkeypatch)
    cut_cfg = _cfg(demo_root, tmp_path / "cut", **KINDS[kind])
    with pytest.raises(Interrupt):  # 3 steps per epoch: the 5th is inside epoch 2
        _train(cut_cfg, demo_root, monkeypatch, stop_at_call=5)
    assert load_checkpoint(tmp_path / "cut" / "resume" / "last.pt")["epoch"] == 1
    resumed, h_res = _train(cut_cfg, demo_root, monkeypatch)
    assert h_res.resumed_from == 1 and h_full.resumed_from == 0
    assert [r["train_loss"] for r in h_res.epochs] == [r["train_loss"] for r in h_full.epochs]
    a = load_checkpoint(tmp_path / "full" / "resume" / "last.pt")["model_state"]
    b = load_checkpoint(tmp_path / "cut" / "resume" / "last.pt")["model_state"]
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"resumed weights differ from the uninterrupted run's: {differ[:5]}"
