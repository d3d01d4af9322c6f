"""Start one run's training on N processes with torchrun, from a notebook or run_all.

Why a torchrun *subprocess* rather than a forked launcher: once the notebook's kernel has
touched CUDA, forking processes that use CUDA fails; torchrun starts fresh interpreters,
hosts the c10d rendezvous (several nodes) and stops every worker when one fails. The kernel
waits, shows the workers' output as it comes, then loads `best.pt` and evaluates in its
own process as for one process.

Files (under `checkpoints/<run>/launch/`, on a disk every node sees when `nnodes > 1`):
`run.json` (config, checkpoint meta, manifest file name), `manifest.json` (the notebook's
manifest, so the workers train on exactly its rows), `history.json` (written by rank 0).
"""
from __future__ import annotations

import errno
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from collections import defaultdict, deque
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_json, atomic_write_text
from ..runtime import usable_cpus
from .distributed import LaunchError, backend_for, under_torchrun

__all__ = ["needs_launch", "check_launch", "torchrun_command", "train_distributed",
           "DistributedTrainingError", "LaunchError"]

REPO_ROOT = Path(__file__).resolve().parents[2]
_PREFIX = re.compile(r"^\[default(\d+)\]:")


class DistributedTrainingError(RuntimeError):
    """A worker failed: the message names its rank, exit code or signal, and last lines."""


def needs_launch(cfg) -> bool:
    """More than one process asked for, and this process is not one of them yet."""
    return (cfg.nproc_per_node > 1 or cfg.nnodes > 1) and not under_torchrun()


def _endpoint(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise LaunchError(f"rdzv_endpoint={value!r} is not HOST:PORT (e.g. 'node0.lab:29500')")
    return host.strip("[]"), int(port)


def _check_free(host: str, port: int, value: str) -> None:
    """This node hosts the rendezvous: the port must be free on one of its addresses."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise LaunchError(f"rdzv_endpoint={value!r}: port {port} is in use on this "
                                  f"machine: pick a free port (or stop what holds it)") from exc
            raise LaunchError(f"rdzv_endpoint={value!r}: {host} is not an address of this "
                              f"machine, but node_rank=0 hosts the rendezvous: give node 0's "
                              f"own host name ({socket.gethostname()})") from exc


def _check_reachable(host: str, port: int, value: str, timeout: int) -> None:
    """Another node hosts it: wait up to `timeout` s for node 0 to listen."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=min(5, timeout)).close()
            return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise LaunchError(f"rdzv_endpoint={value!r} is unreachable after {timeout} s "
                                  f"({exc.strerror or exc}): start node 0 first, check the "
                                  f"host name, the port and the firewall, or raise "
                                  f"rdzv_timeout") from exc
            time.sleep(1)


def check_launch(cfg) -> None:
    """Every fault a launch can know before it starts, as one `LaunchError` naming the fix."""
    import torch

    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise LaunchError("device='cuda' but this machine has no visible CUDA GPU: use "
                          "device='auto' or 'cpu' (CPU processes train with gloo)")
    if cfg.device == "mps" or (cfg.device == "auto" and not torch.cuda.is_available()
                               and torch.backends.mps.is_available()):
        raise LaunchError("several processes need CUDA GPUs or the CPU: use device='cpu' "
                          "or nproc_per_node=1 on Apple MPS")
    cuda = cfg.device in ("auto", "cuda") and torch.cuda.is_available()
    if cuda and cfg.nproc_per_node > torch.cuda.device_count():
        raise LaunchError(f"nproc_per_node={cfg.nproc_per_node} but {torch.cuda.device_count()} "
                          f"CUDA GPU(s) are visible: use --nproc-per-node "
                          f"{torch.cuda.device_count()} or fewer (one process per GPU)")
    if cfg.sync_bn and not cuda:
        raise LaunchError("sync_bn=true needs CUDA GPUs (torch's SyncBatchNorm rejects CPU "
                          "tensors): use sync_bn=false on CPU")
    backend_for(cfg.dist_backend, torch.device("cuda" if cuda else "cpu"))
    if cfg.rdzv_endpoint:
        host, port = _endpoint(cfg.rdzv_endpoint)
        try:
            socket.getaddrinfo(host, port)
        except socket.gaierror as exc:
            raise LaunchError(f"rdzv_endpoint={cfg.rdzv_endpoint!r}: host {host!r} is "
                              f"unknown ({exc.strerror}): check the name of node 0") from exc
        if cfg.node_rank == 0:
            _check_free(host, port, cfg.rdzv_endpoint)
        else:
            _check_reachable(host, port, cfg.rdzv_endpoint, cfg.rdzv_timeout)


def torchrun_command(cfg, spec: Path) -> list[str]:
    """`python -m torch.distributed.run ... -m utils.study.train_cli --config spec`."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={cfg.nproc_per_node}",
           "--max-restarts=0", "--tee=3"]
    if cfg.nnodes == 1 and not cfg.rdzv_endpoint:
        cmd.append("--standalone")  # a free local port, a fresh run id
    else:
        cmd += [f"--nnodes={cfg.nnodes}", f"--node-rank={cfg.node_rank}", "--rdzv-backend=c10d",
                f"--rdzv-endpoint={cfg.rdzv_endpoint}", f"--rdzv-id={cfg.rdzv_id or cfg.step}",
                f"--rdzv-conf=is_host={str(cfg.node_rank == 0).lower()},"
                f"join_timeout={cfg.rdzv_timeout}"]
    return cmd + ["-m", "utils.study.train_cli", "--config", str(spec)]


def _write_spec(exp, meta: dict, folder: Path, synthetic: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "history.json").unlink(missing_ok=True)  # only this launch's may be read
    atomic_write_text(folder / "manifest.json", exp.manifest.to_json(orient="table"))
    return atomic_write_json(folder / "run.json", {
        "config": exp.cfg.to_dict(), "meta": meta, "manifest": "manifest.json",
        "synthetic": synthetic})


def _entries(output: str) -> list[dict]:
    """Each failed worker in torchrun's last summary: root cause first, then the others."""
    summary = output.rpartition(" FAILED\n")[2]
    others, _, root = summary.partition("Root Cause (first observed failure):")
    found = []
    for block in re.split(r"^\[\d+\]:", root + others, flags=re.M)[1:]:
        rank = re.search(r"rank\s*:\s*(\d+) \(local_rank: (\d+)\)", block)
        exit_ = re.search(r"exitcode\s*:\s*(-?\d+)", block)
        if rank and exit_:
            signal = re.search(r"\((SIG[A-Z]+)\)", block)
            host = re.search(r"host\s*:\s*(\S+)", block)
            found.append({"rank": int(rank.group(1)), "local": int(rank.group(2)),
                          "status": int(exit_.group(1)), "host": host.group(1) if host else "?",
                          "signal": signal.group(1) if signal else None})
    return found


def _failure(output: str, tails: dict[int, deque], code: int) -> str:
    """The worker that failed first, with its last lines.

    torchrun's 'Root Cause' is the earliest timestamp, and a worker that crashed on a dead
    peer's closed socket writes its error file before torchrun notices the peer died; so a
    worker torchrun itself stopped (SIGTERM) is passed over for one that failed on its own.
    """
    entries = _entries(output)
    if not entries:
        lines = "".join(tails.get(-1, []))
        return f"torchrun exited with code {code} before naming a failed worker:\n{lines}"
    first = next((e for e in entries if e["status"] != -15), entries[0])
    status = first["status"]
    how = (f"was killed by {first['signal'] or 'signal ' + str(-status)}"
           if status < 0 else f"exited with code {status}")
    lines = "".join(tails.get(first["local"], [])) or "(it printed nothing)\n"
    return (f"distributed training failed: rank {first['rank']} (local rank {first['local']} "
            f"on {first['host']}) {how}; torchrun stopped the other workers. "
            f"A re-run resumes from last.pt. Its last lines:\n{lines}")


def _stream(cmd: list[str], env: dict[str, str]) -> None:
    """Run torchrun, echo its output live (rank 0 plain, other ranks tagged), keep each
    rank's last lines for the error."""
    tails: dict[int, deque] = defaultdict(lambda: deque(maxlen=25))
    everything: deque = deque(maxlen=400)
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    try:
        for line in proc.stdout:
            match = _PREFIX.match(line)
            local = int(match.group(1)) if match else -1
            text = line[match.end():] if match else line
            tails[local].append(text)
            everything.append(line)
            sys.stdout.write(text if local <= 0 else f"[local rank {local}] {text}")
            sys.stdout.flush()
        code = proc.wait()
    finally:
        if proc.poll() is None:  # the cell was interrupted: torchrun stops its workers
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    if code and "SessionDeadline" in "".join(everything):  # every rank stopped at the deadline
        from .loop import SessionDeadline

        raise SessionDeadline("distributed training stopped at the session's deadline; "
                              "last.pt holds the finished epochs; a re-run continues it")
    if code:
        raise DistributedTrainingError(_failure("".join(everything), tails, code))


def _worker_env(nproc: int) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", CXR_QUIET="1")
    # torchrun's default is 1 thread (with a banner): share this machine's cores instead
    env.setdefault("OMP_NUM_THREADS", str(max(1, usable_cpus() // nproc)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def _free_gpu_memory() -> None:
    """Hand the kernel's cached GPU memory back before torchrun's rank 0 shares GPU 0 with
    it: a notebook that trained or evaluated earlier runs keeps their freed blocks in
    torch's caching allocator, which the workers cannot use."""
    import gc

    import torch

    gc.collect()  # models of earlier runs that only cycles still hold
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def train_distributed(exp, meta: dict, synthetic: bool) -> Any:
    """Train `exp` under torchrun; load the best weights into `exp.model`; return History."""
    from .checkpoint import load_checkpoint
    from .loop import History

    cfg = exp.cfg
    check_launch(cfg)
    folder = exp.checkpoint / "launch"
    spec = _write_spec(exp, meta, folder, synthetic)
    cmd = torchrun_command(cfg, spec)
    print(f"training on {cfg.nproc_per_node * cfg.nnodes} processes "
          f"({cfg.nproc_per_node} here, {cfg.nnodes} node(s)): {shlex.join(cmd[1:])}", flush=True)
    if cfg.nnodes > 1:
        other = [c for c in cmd[3:] if not c.startswith("--node-rank")]
        print(f"on node K = 1..{cfg.nnodes - 1}, from this repository, run: torchrun "
              f"--node-rank=K {shlex.join(other)}", flush=True)
    _free_gpu_memory()
    _stream(cmd, _worker_env(cfg.nproc_per_node))
    record = json.loads((folder / "history.json").read_text())
    history = History.from_dict(record)
    # how the workers resumed, whether cuDNN autotuned (until History has these fields)
    history.resume, history.cudnn_benchmark = record.get("resume"), record.get("cudnn_benchmark")
    exp.model.load_state_dict(load_checkpoint(exp.checkpoint / "best.pt")["model_state"])
    for name in ("manifest.json", "history.json"):
        (folder / name).unlink(missing_ok=True)
    return history
