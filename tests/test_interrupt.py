"""A training *process* killed with SIGKILL resumes to exactly the uninterrupted result.

`tests/helpers_train.py` runs `fit` (registry simple_cnn, 6 epochs, shuffled loader, dropout,
NumPy/Python noise per item) with checkpoints in a tmp folder. One process runs through; a
second is SIGKILLed once its `last.pt` holds epoch >= 2 and then started again with the same
command. Final weights and per-epoch metrics must be identical, bit for bit.
(run_all's own SIGKILL resume is tested in test_run_all.py.)
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from utils.training.checkpoint import CheckpointError, load_checkpoint

HELPER = Path(__file__).with_name("helpers_train.py")
METRICS = ("epoch", "train_loss", "val_loss", "val_auroc", "val_f1", "lr", "train_images")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CXR_QUIET": "1"}


def _start(ckpt_dir: Path, out: Path, *extra: str) -> subprocess.Popen:
    # --sleep: ~0.25 s more per epoch, so the kill lands mid-run (sleeping changes no number)
    return subprocess.Popen([sys.executable, str(HELPER), str(ckpt_dir), str(out),
                             "--epochs", "6", "--sleep", "0.005", *extra], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _saved_epoch(last: Path) -> int:
    try:
        return int(load_checkpoint(last)["epoch"])
    except (CheckpointError, FileNotFoundError):
        return 0  # not written yet


def _kill_after_epoch(proc: subprocess.Popen, last: Path, epoch: int, timeout: float) -> int:
    """SIGKILL `proc` as soon as `last` holds `epoch` (read only when its mtime changes)."""
    deadline, seen = time.monotonic() + timeout, None
    while time.monotonic() < deadline and proc.poll() is None:
        stamp = last.stat().st_mtime_ns if last.exists() else None
        if stamp != seen and _saved_epoch(last) >= epoch:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return _saved_epoch(last)
        seen = stamp
        time.sleep(0.02)
    proc.kill()
    output = proc.communicate()[0]
    pytest.fail(f"the run ended or stalled before saving epoch {epoch} "
                f"(exit {proc.returncode}):\n{output}")


@pytest.mark.slow
def test_sigkilled_training_resumes_to_the_uninterrupted_result(tmp_path):
    full_dir, cut_dir, go = tmp_path / "full", tmp_path / "cut", tmp_path / "go"
    full = _start(full_dir, tmp_path / "full.pt")  # runs alongside the one we kill
    cut = _start(cut_dir, tmp_path / "cut.pt")
    # the same command again, in a fresh interpreter: it imports now (seconds of start-up
    # overlapped with the first run) but reads cut_dir only once `go` exists, after the kill
    again = _start(cut_dir, tmp_path / "cut.pt", "--wait-for", str(go))
    try:
        killed_at = _kill_after_epoch(cut, cut_dir / "last.pt", 2, timeout=50)
        assert cut.returncode == -signal.SIGKILL
        assert 2 <= killed_at < 6, "killed after the last epoch: nothing left to resume"
        assert not (tmp_path / "cut.pt").exists()
        # what the kill left is complete, and no half-written file sits beside it
        assert load_checkpoint(cut_dir / "last.pt")["epoch"] == killed_at
        assert not list(cut_dir.glob(".last.pt.*")) and not list(cut_dir.glob(".best.pt.*"))
        go.touch()
        output = again.communicate(timeout=60)[0]
        assert again.returncode == 0, output
        assert f"at epoch {killed_at}/6" in output  # it resumed, not restarted
        assert full.wait(timeout=60) == 0, full.communicate()[0]
    finally:
        for proc in (full, cut, again):
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    a = torch.load(tmp_path / "full.pt", weights_only=True)
    b = torch.load(tmp_path / "cut.pt", weights_only=True)
    assert b["history"]["resumed_from"] == killed_at and a["history"]["resumed_from"] == 0
    rows = [[{k: r[k] for k in METRICS} for r in x["history"]["epochs"]] for x in (a, b)]
    assert len(rows[0]) == 6 and rows[0] == rows[1]
    assert a["history"]["best_epoch"] == b["history"]["best_epoch"]
    assert a["state"].keys() == b["state"].keys()
    for key in a["state"]:
        assert torch.equal(a["state"][key], b["state"][key]), key
    for d in (full_dir, cut_dir):
        assert sorted(p.name for p in d.iterdir()) == ["best.pt", "last.pt"]
        assert load_checkpoint(d / "last.pt")["epoch"] == 6
