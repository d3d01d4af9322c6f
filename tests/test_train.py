"""fit(): learning, exact resume, atomic checkpoints, early stopping, checkpoint errors.

Tiny models and loaders of our own yielding the dataset contract's `(image, target, meta)`
batches, so these tests do not depend on utils.models or utils.data.
"""
from __future__ import annotations

import os
import random
import re
import sys
import types

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from conftest import shared_path
from helpers_train import KillAfter
from utils.config import make_config
from utils.training.checkpoint import (CheckpointError, load_checkpoint, load_model,
                                       update_checkpoint)
from utils.training.loop import History, fit


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Toy(Dataset):
    """Separable 1×8×8 images; __getitem__ draws Python and NumPy noise (like augmentation)."""

    def __init__(self, n: int, seed: int = 0, noise: bool = True):
        g = torch.Generator().manual_seed(seed)
        self.labels = (torch.arange(n) % 2).float()
        self.images = torch.randn(n, 1, 8, 8, generator=g) + self.labels.view(-1, 1, 1, 1)
        self.noise, self.class_names = noise, ["Pneumonia"]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        img = self.images[i]
        if self.noise:
            img = img + 0.1 * float(np.random.randn()) + 0.1 * random.random()
        return img, self.labels[i:i + 1], {"path": f"img{i}.png", "patient_id": f"p{i}", "index": i}


def collate(batch):
    images, targets, metas = zip(*batch)
    return torch.stack(images), torch.stack(targets), list(metas)


class TinyNet(nn.Module):
    def __init__(self, k: int = 1, dropout: float = 0.2):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(4 * 64, k))

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)))


def cfg_for(**kw):
    base = dict(epochs=3, batch_size=4, lr=1e-2, optimizer="adamw", scheduler="cosine",
                num_workers=0, device="cpu", seed=7, monitor="val_loss", step="t")
    return make_config({**base, **kw}, profile="full")


def loaders(kind: str = "shuffle", n: int = 16):
    train, val = Toy(n, seed=1), Toy(8, seed=2, noise=False)
    if kind == "weighted":
        sampler = WeightedRandomSampler(torch.linspace(1, 2, n), num_samples=n,
                                        generator=torch.Generator().manual_seed(3))
        tl = DataLoader(train, batch_size=4, sampler=sampler, collate_fn=collate)
    elif kind == "generator":
        tl = DataLoader(train, batch_size=4, shuffle=True, collate_fn=collate,
                        generator=torch.Generator().manual_seed(5))
    else:
        tl = DataLoader(train, batch_size=4, shuffle=True, collate_fn=collate)
    return tl, DataLoader(val, batch_size=4, collate_fn=collate)


def run(cfg, ckpt_dir=None, kind="shuffle", loss=None, **kw):
    torch.manual_seed(0)  # same initial weights in every run
    model = TinyNet()
    tl, vl = loaders(kind)
    hist = fit(model, tl, vl, cfg, loss_fn=loss or KillAfter(), ckpt_dir=ckpt_dir, **kw)
    return model, hist


METRIC_KEYS = ("epoch", "train_loss", "val_loss", "val_auroc", "val_f1", "lr")


def test_tiny_model_overfits_eight_examples():
    cfg = cfg_for(epochs=40, scheduler="none", lr=3e-2)
    torch.manual_seed(0)
    model = TinyNet(dropout=0.0)
    data = Toy(8, noise=False)
    tl = DataLoader(data, batch_size=8, collate_fn=collate)
    hist = fit(model, tl, tl, cfg, loss_fn=nn.BCEWithLogitsLoss())
    losses = [r["train_loss"] for r in hist.epochs]
    assert losses[-1] < 0.1 * losses[0]
    assert hist.epochs[-1]["val_auroc"] == 1.0 and hist.epochs[-1]["val_f1"] == 1.0
    assert len(hist.epochs) == 40 and hist.train_seconds > 0 and hist.train_images_per_second > 0


@pytest.mark.parametrize("kind", ["shuffle", "generator", "weighted"])
def test_resume_after_kill_matches_uninterrupted_run(tmp_path, kind):
    cfg = cfg_for(epochs=3)
    full, h_full = run(cfg, tmp_path / "a", kind)
    # killed on the 2nd step of epoch 2 (4 steps per epoch), after last.pt of epoch 1
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "b", kind, loss=KillAfter(6))
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 1
    resumed, h_res = run(cfg, tmp_path / "b", kind)
    assert h_res.resumed_from == 1 and h_full.resumed_from == 0
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    for ra, rb in zip(h_full.epochs, h_res.epochs, strict=True):
        assert {k: ra[k] for k in METRIC_KEYS} == {k: rb[k] for k in METRIC_KEYS}
    a = load_checkpoint(tmp_path / "a" / "last.pt")["model_state"]
    b = load_checkpoint(tmp_path / "b" / "last.pt")["model_state"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_new_data_under_the_same_config_starts_fresh(tmp_path):
    """The config cannot show that the files changed (e.g. full NIH downloaded where the
    sample was); the caller's data fingerprint in `meta` must match to resume."""
    cfg = cfg_for(epochs=2)
    _, h1 = run(cfg, tmp_path, meta={"data_fingerprint": "aaaa"})
    loss = KillAfter()
    _, same = run(cfg, tmp_path, loss=loss, meta={"data_fingerprint": "aaaa"})
    assert loss.calls == 0 and same.resumed_from == 2
    with pytest.warns(UserWarning, match="data_fingerprint: 'aaaa' -> 'bbbb'"):
        _, fresh = run(cfg, tmp_path, meta={"data_fingerprint": "bbbb"})
    assert fresh.resumed_from == 0 and len(fresh.epochs) == 2
    assert load_checkpoint(tmp_path / "last.pt")["data_fingerprint"] == "bbbb"


def test_checkpoint_from_before_the_fingerprints_resumes_with_a_warning(tmp_path):
    cfg = cfg_for(epochs=2)
    run(cfg, tmp_path)  # no meta: like a last.pt written by an older version
    loss = KillAfter()
    with pytest.warns(UserWarning, match="does not record.*data_fingerprint"):
        _, h = run(cfg, tmp_path, loss=loss, meta={"data_fingerprint": "aaaa"})
    assert loss.calls == 0 and h.resumed_from == 2


def test_init_fingerprint_of_a_checkpoint_and_of_a_plain_state_dict(tmp_path):
    from utils.study.experiment import _init_fingerprint

    assert _init_fingerprint("") == ""
    run(cfg_for(epochs=1), tmp_path / "a", meta={"data_fingerprint": "abcd"})
    assert _init_fingerprint(str(tmp_path / "a" / "best.pt")).startswith("abcd:")
    torch.save(TinyNet().state_dict(), tmp_path / "plain.pt")  # create_model accepts these
    assert _init_fingerprint(str(tmp_path / "plain.pt")).startswith("file:")


def test_resume_without_rng_restore_would_differ(tmp_path):
    """Guards the resume test: the data order and noise do depend on the saved RNG state."""
    cfg = cfg_for(epochs=2, resume=False)
    _, h1 = run(cfg, tmp_path / "a")
    cfg1 = cfg_for(epochs=2)
    with pytest.raises(KeyboardInterrupt):
        run(cfg1, tmp_path / "b", loss=KillAfter(5))
    ckpt = load_checkpoint(tmp_path / "b" / "last.pt")
    ckpt["rng_state"]["torch"] = torch.manual_seed(123).get_state()
    torch.save(ckpt, tmp_path / "b" / "last.pt")
    _, h2 = run(cfg1, tmp_path / "b")
    assert h1.epochs[0]["train_loss"] == h2.epochs[0]["train_loss"]
    assert h1.epochs[1]["train_loss"] != h2.epochs[1]["train_loss"]


def test_finished_run_is_not_retrained_and_changed_config_starts_fresh(tmp_path):
    cfg = cfg_for(epochs=2)
    _, h1 = run(cfg, tmp_path)
    loss = KillAfter()
    _, h2 = run(cfg, tmp_path, loss=loss)
    assert loss.calls == 0 and h2.epochs == h1.epochs and h2.resumed_from == 2
    with pytest.warns(UserWarning, match="lr: 0.01 -> 0.02"):
        _, h3 = run(cfg_for(epochs=2, lr=2e-2), tmp_path)
    assert h3.resumed_from == 0 and [r["lr"] for r in h3.epochs] == pytest.approx([2e-2, 1e-2])
    assert load_checkpoint(tmp_path / "last.pt")["config"]["lr"] == 2e-2


def test_checkpoint_contents_and_weights_only_load(tmp_path):
    cfg = cfg_for(epochs=1)
    model, hist = run(cfg, tmp_path, meta={"synthetic": True, "sizes": np.array([3, 4])})
    ckpt = torch.load(tmp_path / "best.pt", weights_only=True)
    # best.pt: what inference, the gallery and init_checkpoint read; nothing only a resume needs
    inference = ("model_name", "model_state", "epoch", "history", "best_score", "config",
                 "num_classes", "class_names", "input_size", "mean", "std", "synthetic",
                 "distributed")
    resume_only = ("optimizer_state", "scheduler_state", "scaler_state", "rng_state", "steps",
                   "train_state", "resume")  # train_state: the live weights with an EMA
    assert sorted(ckpt) == sorted((*inference, "sizes"))
    assert ckpt["model_name"] == cfg.model and ckpt["num_classes"] == 1
    assert ckpt["class_names"] == ["Pneumonia"] and ckpt["sizes"] == [3, 4]
    assert ckpt["config"] == cfg.to_dict() and ckpt["history"] == hist.to_dict()
    assert ckpt["distributed"] == {"world_size": 1, "nnodes": 1, "backend": "none"}
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert sorted(last) == sorted((*inference, *resume_only, "sizes"))
    assert all(torch.equal(ckpt["model_state"][k], v) for k, v in last["model_state"].items())


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    cfg = cfg_for(epochs=2)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path, loss=KillAfter(5))
    before = (tmp_path / "last.pt").read_bytes()

    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):  # best.pt may be written; last.pt dies mid-write
        if "last.pt" not in str(f):
            return real_save(obj, f, *args, **kwargs)
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        run(cfg, tmp_path)
    assert (tmp_path / "last.pt").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["best.pt", "last.pt"]


def test_truncated_or_missing_checkpoint_names_the_file_and_fix(tmp_path):
    run(cfg_for(epochs=1), tmp_path)
    good = (tmp_path / "last.pt").read_bytes()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match=re.escape(f"corrupt or incomplete checkpoint "
                                                        f"{bad}: delete it and re-run")):
        load_checkpoint(bad)
    (tmp_path / "last.pt").write_bytes(good[:100])
    with pytest.raises(CheckpointError, match="corrupt or incomplete"):  # resume says so too
        run(cfg_for(epochs=1), tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.parametrize("monitor", ["val_loss", "val_auroc"])
def test_early_stopping_stops_after_patience(monitor, tmp_path):
    cfg = cfg_for(epochs=10, lr=1e-12, early_stopping=2, monitor=monitor, scheduler="none")
    _, hist = run(cfg, tmp_path)  # lr ~0: nothing improves after epoch 1
    assert hist.stopped_early and len(hist.epochs) == 3 and hist.best_epoch == 1
    loss = KillAfter()
    _, again = run(cfg, tmp_path, loss=loss)  # a run that stopped early is finished
    assert loss.calls == 0 and again.epochs == hist.epochs and again.stopped_early


def test_best_checkpoint_follows_monitor_and_is_restored(tmp_path):
    cfg = cfg_for(epochs=4, lr=5e-2, scheduler="none")
    model, hist = run(cfg, tmp_path)
    losses = [r["val_loss"] for r in hist.epochs]
    assert hist.best_epoch == int(np.argmin(losses)) + 1 and hist.best_score == min(losses)
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == hist.best_epoch
    assert all(torch.equal(v, best["model_state"][k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("optimizer,scheduler", [("sgd", "step"), ("adam", "plateau"),
                                                 ("adamw", "cosine"), ("adamw", "none")])
def test_optimizers_and_schedulers(optimizer, scheduler):
    cfg = cfg_for(epochs=3, optimizer=optimizer, scheduler=scheduler, lr=1e-2, grad_clip=0.5,
                  max_steps_per_epoch=2)
    _, hist = run(cfg)
    lrs = [r["lr"] for r in hist.epochs]
    assert lrs[0] == pytest.approx(1e-2)
    if scheduler == "step":       # ×0.1 every epochs // 3 = 1 epoch
        assert lrs == pytest.approx([1e-2, 1e-3, 1e-4])
    elif scheduler == "cosine":   # per step, to 0 over 3 epochs × 2 steps
        assert lrs[1] == pytest.approx(1e-2 * (1 + np.cos(np.pi * 2 / 6)) / 2)
    elif scheduler == "none":
        assert lrs == pytest.approx([1e-2] * 3)
    assert all(r["train_images"] == 8 for r in hist.epochs)  # max_steps_per_epoch=2 × 4


def test_quiet_mode_prints_one_line_per_epoch(capsys, monkeypatch):
    monkeypatch.setenv("CXR_QUIET", "1")
    _, hist = run(cfg_for(epochs=3))
    out = capsys.readouterr()
    lines = out.out.strip().splitlines()
    assert len(lines) == 3 and all(ln.startswith(f"epoch {i + 1}/3") for i, ln in enumerate(lines))
    assert "val_auroc" in lines[0] and "img/s" in lines[0] and out.err == ""
    frame = hist.to_frame()
    assert list(frame["epoch"]) == [1, 2, 3]
    assert History.from_dict(hist.to_dict()) == hist


def test_load_model_and_update_checkpoint(tmp_path, monkeypatch):
    run(cfg_for(epochs=1, dropout=0.2), tmp_path)
    calls = {}

    def create_model(name, num_classes=1, pretrained=False, **kw):
        calls.update(name=name, num_classes=num_classes, pretrained=pretrained, **kw)
        return TinyNet(num_classes)

    monkeypatch.setitem(sys.modules, "utils.models.registry",
                        types.SimpleNamespace(create_model=create_model))
    model, ckpt = load_model(tmp_path / "best.pt", device="cpu")
    assert calls["pretrained"] is False and calls["image_size"] == ckpt["input_size"]
    assert not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt["model_state"][k])
    update_checkpoint(tmp_path / "best.pt", threshold=np.float64(0.37), threshold_policy="max_f1")
    again = load_checkpoint(tmp_path / "best.pt")
    assert again["threshold"] == 0.37 and again["epoch"] == ckpt["epoch"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.slow
def test_learns_pneumoniamnist_in_one_epoch():
    """Real data: the registry's `simple_cnn` (the study's CNN) reaches val AUROC >= 0.90 on
    PneumoniaMNIST after one epoch on the CPU (28 px upsampled to 32: five pooling stages)."""
    from utils.models.registry import create_model

    data = np.load(shared_path("pneumoniamnist", "pneumoniamnist.npz"))

    class NpzSet(Dataset):
        def __init__(self, split):
            x = torch.from_numpy(data[f"{split}_images"]).float().div(255).unsqueeze(1)
            self.x = nn.functional.interpolate(x, size=32, mode="bilinear").sub(0.5).div(0.25)
            self.y = torch.from_numpy(data[f"{split}_labels"].reshape(-1, 1)).float()

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            return self.x[i], self.y[i], {"index": i}

    torch.manual_seed(0)
    model = create_model("simple_cnn", num_classes=1, pretrained=False)
    tl = DataLoader(NpzSet("train"), batch_size=32, shuffle=True, collate_fn=collate)
    vl = DataLoader(NpzSet("val"), batch_size=256, collate_fn=collate)
    hist = fit(model, tl, vl, cfg_for(epochs=1, lr=3e-3, monitor="val_auroc"),
               loss_fn=nn.BCEWithLogitsLoss())
    assert hist.epochs[0]["val_auroc"] >= 0.90, hist.epochs
    assert hist.epochs[0]["train_images"] == 4708


def test_recalibrate_batchnorm_sets_running_stats_to_the_data():
    from utils.training.loop import recalibrate_batchnorm

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(1))
    x = torch.randn(64, 1, 8, 8) * 3 + 5
    loader = [(x[i:i + 16], torch.zeros(16, 1), [{}] * 16) for i in range(0, 64, 16)]
    model(x[:2])  # materialise the lazy layer
    assert recalibrate_batchnorm(model, loader, batches=4)
    with torch.no_grad():
        conv_out = model[0](x)
    torch.testing.assert_close(model[1].running_mean, conv_out.mean((0, 2, 3)), rtol=1e-4, atol=1e-4)
    assert not model.training
    assert not recalibrate_batchnorm(nn.Linear(2, 1), loader)


def test_tensorboard_event_files_hold_every_epoch(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = cfg_for(epochs=3, tensorboard=True, reports_dir=str(tmp_path / "reports"), step="tb")
    _, hist = run(cfg, tmp_path / "ckpt")
    events = EventAccumulator(str(tmp_path / "reports" / "runs" / "tb")).Reload()
    assert {"loss/train", "loss/val", "val/auroc", "val/f1", "lr"} <= set(events.Tags()["scalars"])
    train = events.Scalars("loss/train")
    assert [e.step for e in train] == [1, 2, 3]
    assert [e.value for e in train] == pytest.approx([r["train_loss"] for r in hist.epochs])
    assert [e.value for e in events.Scalars("lr")] == pytest.approx([r["lr"] for r in hist.epochs])


def test_tensorboard_is_off_by_default(tmp_path):
    run(cfg_for(epochs=1, reports_dir=str(tmp_path / "reports")), tmp_path / "ckpt")
    assert not (tmp_path / "reports").exists()


def test_missing_tensorboard_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(RuntimeError, match=r"tensorboard=true needs the tensorboard package"):
        run(cfg_for(epochs=1, tensorboard=True, reports_dir=str(tmp_path)), tmp_path / "c")


def test_a_tie_on_the_monitor_goes_to_the_lower_validation_loss():
    """A saturated val AUROC (1.0 from epoch 2) must not pin best.pt to epoch 2 while the
    loss keeps falling, nor stop training early for lack of progress."""
    from utils.training.history import History, record

    cfg = cfg_for(epochs=10, early_stopping=2, monitor="val_auroc")
    hist = History(monitor="val_auroc")
    rows = [(0.9, 0.5), (1.0, 0.4), (1.0, 0.3), (1.0, 0.2), (1.0, 0.25), (0.99, 0.1)]
    flags = [record(hist, cfg, {"epoch": i + 1, "val_auroc": a, "val_loss": l, "seconds": 1.0,
                                "val_seconds": 0.1, "train_images": 8})
             for i, (a, l) in enumerate(rows)]
    assert flags == [True, True, True, True, False, False]
    assert hist.best_epoch == 4 and hist.best_score == 1.0 and hist.stopped_early
