"""Data-parallel training: shares of every epoch, N processes = one process with N times the
batch, validation over every image once, and the faults that must stop a launch early.

Process tests start 2 gloo processes on the CPU with torchrun (each imports torch: seconds);
the rest are unit tests without processes.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections import deque
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import RandomSampler, SequentialSampler, WeightedRandomSampler

from conftest import ROOT
from utils.config import ConfigError, make_config
from utils.training.distributed import LaunchError, ShardSampler
from utils.training.launch import _failure, check_launch, torchrun_command
from utils.data.samplers import make_sampler

HELPER = Path(__file__).with_name("helpers_dist.py")


def _shares(base_factory, size: int, epoch: int = 1, pad: bool = False) -> list[list[int]]:
    """Each rank's indices, every rank with its own copy of the base sampler (as in N
    processes: same seed, same epoch)."""
    shares = []
    for rank in range(size):
        sampler = ShardSampler(base_factory(), rank, size, pad=pad)
        sampler.set_epoch(epoch)
        shares.append(list(sampler))
    return shares


LABELS = np.array([[1, 0, 0]] * 6 + [[0, 1, 0]] * 10 + [[0, 0, 1]] * 30 + [[0, 0, 0]] * 57)
BASES = {
    "shuffle": lambda: RandomSampler(range(103), generator=torch.Generator().manual_seed(4)),
    "balanced": lambda: make_sampler("balanced", LABELS[:, 0], seed=4),
    "capped": lambda: make_sampler("capped", LABELS, cap=8, seed=4),
}


@pytest.mark.parametrize("kind", list(BASES))
@pytest.mark.parametrize("size", [2, 3])
def test_shards_are_disjoint_positions_of_one_global_order(kind, size):
    base = BASES[kind]()
    if hasattr(base, "set_epoch"):
        base.set_epoch(2)
    order = list(base)  # the sequence one process would draw
    shares = _shares(BASES[kind], size, epoch=2)
    assert len({len(s) for s in shares}) == 1, "every rank must get as many batches"
    kept = len(order) // size * size
    interleaved = [shares[j % size][j // size] for j in range(kept)]
    assert interleaved == order[:kept]  # each position goes to exactly one rank
    if kind != "balanced":  # without replacement: the shares are disjoint sets of images
        assert not set(shares[0]) & set(shares[1])
        assert set().union(*shares) == set(order[:kept])


def test_set_epoch_reaches_the_base_sampler():
    one, two = _shares(BASES["capped"], 2, epoch=1), _shares(BASES["capped"], 2, epoch=2)
    assert one != two  # the capped draw is redrawn per epoch on every rank alike


def test_padded_validation_shares_cover_every_image():
    shares = _shares(lambda: SequentialSampler(range(9)), 2, pad=True)
    assert [len(s) for s in shares] == [5, 5]
    assert sorted(set(shares[0]) | set(shares[1])) == list(range(9))
    assert shares[1][-1] == 0  # the padding repeats the first image; gather_rows drops it


def test_global_batch_must_divide_by_the_processes():
    with pytest.raises(ConfigError, match=r"batch_size=30 .* 4 processes .* multiple of 4"):
        make_config({"batch_size": 30, "nproc_per_node": 2, "nnodes": 2,
                     "rdzv_endpoint": "n0:29500"}, profile="full")
    with pytest.raises(ConfigError, match="nnodes=2 needs rdzv_endpoint"):
        make_config({"nnodes": 2}, profile="full")
    with pytest.raises(ConfigError, match="node_rank=2 must be < nnodes=2"):
        make_config({"nnodes": 2, "node_rank": 2, "rdzv_endpoint": "n0:1"}, profile="full")


def _cfg(**kw):
    return make_config({"nproc_per_node": 2, "device": "cpu", **kw}, profile="full")


def test_launch_faults_name_the_value_and_the_fix(monkeypatch):
    if not torch.cuda.is_available():  # this machine: a CUDA request must fail up front
        with pytest.raises(LaunchError, match="device='cuda' but this machine has no visible"):
            check_launch(_cfg(device="cuda"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(LaunchError, match=r"nproc_per_node=2 but 1 CUDA GPU.*--nproc-per-node 1"):
        check_launch(_cfg(device="auto"))
    monkeypatch.undo()
    with pytest.raises(LaunchError, match="sync_bn=true needs CUDA"):
        check_launch(_cfg(sync_bn=True))
    with pytest.raises(LaunchError, match="dist_backend='nccl' needs CUDA"):
        check_launch(_cfg(dist_backend="nccl"))
    with pytest.raises(LaunchError, match="is not HOST:PORT"):
        check_launch(_cfg(rdzv_endpoint="node0"))
    with pytest.raises(LaunchError, match="host 'no-such-node.invalid' is unknown"):
        check_launch(_cfg(rdzv_endpoint="no-such-node.invalid:29500"))


def test_port_in_use_and_unreachable_endpoint():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(LaunchError, match=f"port {port} is in use on this machine"):
            check_launch(_cfg(rdzv_endpoint=f"127.0.0.1:{port}"))
    # nothing listens there any more: node 1 waits rdzv_timeout seconds, then says so
    with pytest.raises(LaunchError, match=f"127.0.0.1:{port}' is unreachable after 1 s"):
        check_launch(_cfg(nnodes=2, node_rank=1, rdzv_endpoint=f"127.0.0.1:{port}",
                          rdzv_timeout=1))


def test_torchrun_command_for_one_and_several_nodes(tmp_path):
    one = torchrun_command(_cfg(step="s"), tmp_path / "run.json")
    assert "--standalone" in one and one[-4:] == ["-m", "utils.study.train_cli", "--config",
                                                  str(tmp_path / "run.json")]
    two = torchrun_command(_cfg(step="s", nnodes=2, node_rank=1, rdzv_endpoint="n0:29500"),
                           tmp_path / "run.json")
    assert {"--nnodes=2", "--node-rank=1", "--rdzv-endpoint=n0:29500", "--rdzv-id=s",
            "--rdzv-backend=c10d"} <= set(two) and "--standalone" not in two
    assert any(c.startswith("--rdzv-conf=is_host=false") for c in two)


def test_failure_names_the_rank_the_signal_and_its_last_lines():
    summary = """Root Cause (first observed failure):
[0]:
  time      : 2026-12-01_22:05:23
  host      : gpu3
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 14544)  (SIGKILL)
  traceback : Signal 9 (SIGKILL) received by PID 14544"""
    message = _failure(summary, {1: deque(["epoch 2/4 ...\n"])}, 1)
    assert "rank 1 (local rank 1 on gpu3) was killed by SIGKILL" in message
    assert message.endswith("epoch 2/4 ...\n") and "re-run resumes" in message
    assert "exited with code 3" in _failure(summary.replace("-9 (pid: 14544)  (SIGKILL)",
                                                            "3 (pid: 1)"), {}, 1)


def test_failure_passes_over_a_worker_torchrun_stopped_for_the_one_that_died():
    # torchrun's summary as CI printed it: rank 0 crashed on the dead peer's socket and wrote
    # its error file first, so torchrun named it the root cause; rank 1 was SIGKILLed
    summary = """utils.study.train_cli FAILED
------------------------------------------------------------
Failures:
[0]:
  time      : 2026-12-02_07:12:55
  host      : localhost
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 13647)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 13647
------------------------------------------------------------
Root Cause (first observed failure):
[1]:
  time      : 2026-12-02_07:12:54
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 13646)  (SIGTERM)
  error_file: /tmp/torchelastic/error.json
  traceback : Traceback (most recent call last):
============================================================"""
    message = _failure(summary, {0: deque(["gloo\n"]), 1: deque(["epoch 4/12\n"])}, 1)
    assert "rank 1 (local rank 1 on localhost) was killed by SIGKILL" in message
    assert message.endswith("epoch 4/12\n")
    only_stopped = summary.replace("-9 (pid: 13647)", "-15 (pid: 13647)  (SIGTERM)")
    assert "rank 0 (local rank 0 on localhost) was killed by SIGTERM" in _failure(
        only_stopped, {}, 1)  # all stopped: the root cause stands


def _torchrun(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CXR_QUIET": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node=2", *args], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=timeout)


@pytest.mark.slow
def test_two_processes_of_16_take_the_step_of_one_process_of_32(tmp_path):
    import helpers_dist as h
    from utils.training.scores import summary_scores

    proc = _torchrun(str(HELPER), str(tmp_path / "two.pt"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    two = torch.load(tmp_path / "two.pt", weights_only=True)
    assert two["world"] == {"world_size": 2, "nnodes": 1, "backend": "gloo"}
    assert two["per_rank_batch"] == 16
    h.main(str(tmp_path / "one.pt"))  # the same step in this process, batch 32
    one = torch.load(tmp_path / "one.pt", weights_only=True)
    for key, value in one["state"].items():
        torch.testing.assert_close(two["state"][key], value, rtol=1e-5, atol=1e-6)
    row2, row1 = two["history"]["epochs"][0], one["history"]["epochs"][0]
    assert row2["train_images"] == row1["train_images"] == 32
    assert row2["train_loss"] == pytest.approx(row1["train_loss"], rel=1e-6)

    # validation in 2 processes = one evaluation of the 2-process weights over the 9 images
    model = h.NoBatchNorm()
    model.load_state_dict(two["state"])
    val = h.Separable(9, seed=2, shift=0.05)
    with torch.no_grad():
        logits = model(val.images)
    target = val.labels[:, None]
    scores = summary_scores(target.numpy(), torch.sigmoid(logits).numpy(), 0.5)
    assert row2["val_auroc"] == scores["auroc"] and row2["val_f1"] == scores["f1"]
    assert row2["val_loss"] == pytest.approx(nn.BCEWithLogitsLoss()(logits, target).item(),
                                             rel=1e-6)
    dup = torch.cat([logits, logits[:1]]), torch.cat([target, target[:1]])  # padding kept
    assert nn.BCEWithLogitsLoss()(*dup).item() != pytest.approx(row2["val_loss"], rel=1e-6)


def test_run_all_nproc_per_node_reaches_the_training_steps_only(capsys):
    import run_all

    assert run_all.main(["--list", "--profile", "smoke", "--nproc-per-node", "2",
                         "-p", "05_vit.nproc_per_node=4", "--only", "03_resnet_ablation_v1",
                         "05_vit", "07_comparison"]) == 0
    lines = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines()[1:]}
    assert "nproc_per_node=2" in lines["03_resnet_ablation_v1"]
    assert "nproc_per_node=4" in lines["05_vit"]  # the step's own -p wins
    assert "nproc_per_node" not in lines["07_comparison"]


def test_train_cli_trains_and_evaluates_a_flat_config(tmp_path):
    """The entry point on its own (one process): a file of RunConfig fields in, a trained,
    evaluated run out, built as the notebooks build it."""
    import json

    from utils.data.demo import make_demo
    from utils.study.train_cli import main

    root = make_demo(tmp_path / "demo", seed=0, image_px=48, scale=0.3)
    config = tmp_path / "run.json"
    config.write_text(json.dumps({
        "profile": "smoke", "data_root": str(root), "model": "simple_cnn", "step": "cli",
        "device": "cpu", "checkpoint_dir": str(tmp_path / "ck"),
        "reports_dir": str(tmp_path / "rep")}))
    assert main(["--config", str(config), "--evaluate"]) == 0
    history = json.loads((tmp_path / "history.json").read_text())
    assert len(history["epochs"]) == 1 and history["distributed"]["world_size"] == 1
    results = json.loads((tmp_path / "rep" / "results" / "cli.json").read_text())
    assert results["distributed"] == {"world_size": 1, "nnodes": 1, "backend": "none"}
    assert sorted(p.name for p in (tmp_path / "ck" / "cli").iterdir()) == ["best.pt"]
