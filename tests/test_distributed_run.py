"""Two training processes through the real pipeline, as a user starts them.

- A notebook's training call with `nproc_per_node=2` launches torchrun (2 gloo workers on
  the CPU); a worker SIGKILLed mid-run ends the call with that worker's rank and signal;
  the re-run resumes from `last.pt` and ends with exactly the weights of an uninterrupted
  2-process run.
- `run_all.py --nproc-per-node 2` runs the real 03 notebook in the smoke profile: it trains
  with 2 processes, evaluates in the notebook, and the results JSON says world_size 2.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest
import torch

from conftest import ROOT
from utils.training.checkpoint import CheckpointError, load_checkpoint
from utils.data.demo import make_demo
from utils.training.launch import DistributedTrainingError
from utils.study.notebook import REPO_ROOT
from utils.runtime import RunContext
from utils.runtime import seed_everything

pytestmark = pytest.mark.slow


def _cfg(root, ckpt):
    from utils.config import make_config

    return make_config({"data_root": str(root), "model": "simple_cnn", "image_size": 32,
                        "epochs": 12, "batch_size": 8, "max_steps_per_epoch": 2,
                        "augmentation": "basic", "sampler": "balanced", "dropout": 0.2,
                        "cache": False, "num_workers": 0, "device": "cpu", "seed": 3,
                        "step": "ddp", "nproc_per_node": 2, "checkpoint_dir": str(ckpt),
                        "reports_dir": str(ckpt / "reports")}, profile="smoke")


def _experiment(cfg, root):
    from utils.study.experiment import build_model, prepare_data

    seed_everything(cfg.seed)
    exp = prepare_data(cfg)
    exp.model = build_model(cfg, len(exp.class_names))
    return exp, RunContext(device=torch.device("cpu"), data_root=root, synthetic=True,
                           repo_root=REPO_ROOT, environment={})


def _train_in_thread(cfg, root) -> tuple[threading.Thread, dict]:
    from utils.study.experiment import train

    exp, ctx = _experiment(cfg, root)
    out: dict = {}

    def target():
        try:
            out["history"] = train(exp, ctx)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def _saved_epoch(last) -> int:
    try:
        return int(load_checkpoint(last)["epoch"])
    except (CheckpointError, FileNotFoundError):
        return 0


def _worker(rank: int, config_part: str) -> psutil.Process | None:
    """The torchrun worker of `rank` whose --config path contains `config_part`."""
    for proc in psutil.Process().children(recursive=True):
        try:
            cmd = proc.cmdline()
            if proc.environ().get("RANK") == str(rank) and "utils.study.train_cli" in cmd and \
                    any(config_part in c for c in cmd):
                return proc
        except psutil.Error:
            continue
    return None


def test_sigkilled_worker_fails_the_step_and_the_rerun_resumes_exactly(tmp_path, capfd):
    root = make_demo(tmp_path / "demo", seed=0, image_px=48, scale=0.3)
    cut_cfg = _cfg(root, tmp_path / "cut")
    last = tmp_path / "cut" / "ddp" / "last.pt"
    # the uninterrupted run trains alongside the one that is killed
    full_thread, full = _train_in_thread(_cfg(root, tmp_path / "full"), root)
    thread, cut = _train_in_thread(cut_cfg, root)
    killed_at, deadline = 0, time.monotonic() + 300
    while thread.is_alive() and time.monotonic() < deadline:
        if _saved_epoch(last) >= 1 and (victim := _worker(1, str(tmp_path / "cut"))):
            victim.send_signal(signal.SIGKILL)
            killed_at = _saved_epoch(last)
            break
        time.sleep(0.05)
    thread.join(timeout=120)
    assert 1 <= killed_at < 12, "killed after the last epoch: nothing left to resume"
    error = cut.get("error")
    assert isinstance(error, DistributedTrainingError), cut
    assert "rank 1 (local rank 1" in str(error) and "killed by SIGKILL" in str(error)
    saved = _saved_epoch(last)  # what the kill left is a complete checkpoint
    assert killed_at <= saved < 12

    thread, again = _train_in_thread(cut_cfg, root)
    thread.join(timeout=400)
    full_thread.join(timeout=400)
    assert "history" in again, again.get("error")
    assert "history" in full, full.get("error")
    assert full["history"].distributed == {"world_size": 2, "nnodes": 1, "backend": "gloo"}
    assert f"resumed {last} at epoch {saved}/12" in capfd.readouterr().out
    assert again["history"].resumed_from == saved
    losses = [[r["train_loss"] for r in h.epochs] for h in (full["history"], again["history"])]
    assert losses[0] == losses[1]
    a = load_checkpoint(tmp_path / "full" / "ddp" / "last.pt")["model_state"]
    b = load_checkpoint(last)["model_state"]
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_run_all_trains_the_03_notebook_with_two_processes(tmp_path):
    reports, ckpts = tmp_path / "reports", tmp_path / "checkpoints"
    step = "03_resnet_ablation_final"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "run_all.py", "--profile", "smoke", "--only", step,
                           "--nproc-per-node", "2", "--reports-dir", str(reports),
                           "--checkpoint-dir", str(ckpts)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    results = json.loads((reports / "results" / f"{step}.json").read_text())
    assert results["distributed"] == {"world_size": 2, "nnodes": 1, "backend": "gloo"}
    assert results["config"]["nproc_per_node"] == 2 and len(results["test"]["auroc_ci"]) == 2
    notebook = (reports / f"{step}.ipynb").read_text()
    assert "training on 2 processes" in notebook  # trained by torchrun...
    assert "threshold" in notebook and (reports / f"{step}.html").exists()  # ...evaluated here
    assert sorted(p.name for p in (ckpts / step).iterdir()) == ["best.pt", "launch"]
