"""Data-parallel training under torchrun: process groups, what N processes must agree on,
and the checks that turn a bad launch into one clear error before any work starts.

torchrun (`python -m torch.distributed.run`) starts the processes and sets `RANK`,
`WORLD_SIZE`, `LOCAL_RANK`...; `process_group(cfg)` joins them (gloo on CPU, nccl on CUDA).
`fit()` stays the one loop and asks `world()` who it is:

- every rank draws the same global sample order from the same seeded generator and keeps
  every N-th index (`ShardSampler`), so the global batch k of N processes is the batch k of
  one process with N times their batch: `batch_size` is the *global* batch and the learning
  rate needs no change;
- validation shards the images (padding the last share), gathers the outputs and drops the
  padding duplicates by index: every validation image counts exactly once;
- rank 0 decides (best epoch, early stopping) and broadcasts; rank 0 alone writes files;
- seeds agree where they must (model init, sample order) and differ where they must
  (augmentation, dropout, loader-worker seeds): `World.seed`;
- data preparation never runs under the training group's timeout: rank 0 builds first
  while the others wait on a gloo group of their own with `prepare_timeout` (`rank0_first`);
- how many processes: `nproc_per_node=0` (the default) is resolved once per run to every
  visible CUDA GPU (`resolve_processes`), 1 on the CPU.
"""
from __future__ import annotations

import dataclasses
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, RandomSampler, Sampler, SequentialSampler

__all__ = ["World", "world", "under_torchrun", "process_group", "device_for", "ShardSampler",
           "shard_loaders", "gather_rows", "from_rank0", "all_sum", "barrier", "gather_objects",
           "backend_for", "LaunchError", "resolve_processes", "training_gpus", "rank0_first",
           "broadcast_buffers"]


class LaunchError(RuntimeError):
    """A distributed run that cannot start as configured; the message names the fix."""


@dataclass(frozen=True)
class World:
    """Who this process is among the run's processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    nnodes: int = 1
    backend: str = "none"

    @property
    def main(self) -> bool:
        return self.rank == 0

    def seed(self, seed: int) -> int:
        """This rank's seed for what must differ per rank; rank 0 keeps `seed`, so one
        process runs exactly as before."""
        if self.rank == 0:
            return seed
        return int(np.random.SeedSequence([seed, self.rank]).generate_state(1)[0])

    def as_dict(self) -> dict[str, Any]:
        return {"world_size": self.size, "nnodes": self.nnodes, "backend": self.backend}


def world() -> World:
    """The current process group's view, or `World()` when none is initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(rank=dist.get_rank(), size=dist.get_world_size(),
                 local_rank=int(os.environ.get("LOCAL_RANK", 0)),
                 nnodes=int(os.environ.get("GROUP_WORLD_SIZE", 1)), backend=dist.get_backend())


def under_torchrun() -> bool:
    """True inside a process that torchrun (or another launcher setting its env) started."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def backend_for(requested: str, device: torch.device) -> str:
    """`auto`: nccl for CUDA, gloo otherwise; nccl cannot run on the CPU."""
    if requested == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if requested == "nccl" and device.type != "cuda":
        raise LaunchError(f"dist_backend='nccl' needs CUDA GPUs but the device is {device}: "
                          f"use dist_backend='auto' (gloo on CPU)")
    return requested


def training_gpus(device: str) -> int:
    """The CUDA GPUs a run with `device` may train on (0 on the CPU, MPS, or device='cpu')."""
    if device not in ("auto", "cuda") or not torch.cuda.is_available():
        return 0
    return torch.cuda.device_count()


def resolve_processes(cfg, say: Callable[[str], None] | None = print):
    """The config with `nproc_per_node=0` (auto) made a number, once per run; the one place
    the notebooks (`notebook.setup`, `experiment.train`) and run_all's `--nproc-per-node`
    (a parameter of the notebooks) go through.

    Auto = every visible CUDA GPU (1 process on the CPU/MPS or with device='cpu'); when the
    global `batch_size` does not divide by that many processes (x `nnodes`), the largest
    count that divides it, said in one line. An explicit N is kept as it is (the checks of
    `RunConfig.validate` and `launch.check_launch` apply); with fewer processes than GPUs a
    line names the idle ones. Under torchrun the count is torchrun's. `say` = None: silent.
    Example:
        >>> resolve_processes(make_config({"device": "cpu"})).nproc_per_node  # doctest: +SKIP
        1
    """
    say = say or (lambda _: None)
    if under_torchrun():
        local = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        return dataclasses.replace(cfg, nproc_per_node=local) if not cfg.nproc_per_node else cfg
    gpus = training_gpus(cfg.device)
    if cfg.nproc_per_node:
        if gpus > cfg.nproc_per_node:
            idle = ", ".join(str(i) for i in range(cfg.nproc_per_node, gpus))
            say(f"{gpus} CUDA GPUs visible, nproc_per_node={cfg.nproc_per_node}: GPU(s) {idle} "
                f"stay idle (nproc_per_node=0 uses every visible GPU)")
        return cfg
    fits = [k for k in range(max(gpus, 1), 0, -1) if cfg.batch_size % (k * cfg.nnodes) == 0]
    if not fits:
        from ..config import ConfigError

        raise ConfigError(f"batch_size={cfg.batch_size} is the global batch and must divide by "
                          f"nnodes={cfg.nnodes}: use a multiple of {cfg.nnodes}")
    n = fits[0]
    if n < max(gpus, 1):
        say(f"nproc_per_node=0 (auto): {gpus} CUDA GPUs visible, but batch_size="
            f"{cfg.batch_size} (the global batch) does not divide by {gpus * cfg.nnodes} "
            f"processes: training on {n} per node (GPU(s) {', '.join(map(str, range(n, gpus)))}"
            f" idle); a batch_size that divides uses them all")
    elif n > 1:
        say(f"nproc_per_node=0 (auto): training on {n} processes, one per visible CUDA GPU "
            f"(batch_size={cfg.batch_size} is the global batch, {cfg.batch_size // n} each; "
            f"nproc_per_node=1 for one process)")
    return dataclasses.replace(cfg, nproc_per_node=n)


def device_for(cfg, w: World) -> torch.device:
    """The device this rank trains on: its own GPU (`cuda:LOCAL_RANK`) on CUDA."""
    from ..runtime import pick_device

    device = pick_device(cfg.device)
    if device.type != "cuda" or w.size == 1 and not under_torchrun():
        return device
    visible = torch.cuda.device_count()
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    if local_size > visible:
        raise LaunchError(f"nproc_per_node={local_size} but this node sees {visible} CUDA "
                          f"GPU(s): use --nproc-per-node {visible} or fewer (one process "
                          f"per GPU), or check CUDA_VISIBLE_DEVICES")
    return torch.device("cuda", w.local_rank)


@contextmanager
def process_group(cfg) -> Iterator[World]:
    """Join torchrun's process group for the block (nothing to join for one process)."""
    if not under_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        yield World()
        return
    local = World(rank=int(os.environ["RANK"]), size=int(os.environ["WORLD_SIZE"]),
                  local_rank=int(os.environ["LOCAL_RANK"]))
    device = device_for(cfg, local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend_for(cfg.dist_backend, device),
                            device_id=device if device.type == "cuda" else None)
    try:
        yield world()
        # leave together: a rank that tore gloo down while rank 0 still wrote its files
        # aborted at exit once in CI ("terminate called without an active exception")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _prepare_barrier(group, w: World, timeout: int, what: str) -> None:
    try:
        dist.barrier(group=group)
    except RuntimeError as exc:  # gloo's timeout, or rank 0's end (its connection closed)
        raise LaunchError(f"rank {w.rank} waited for {what} longer than prepare_timeout="
                          f"{timeout} s, or rank 0 failed while preparing it (its error comes "
                          f"first): raise prepare_timeout, or build the caches beforehand "
                          f"(01_preprocessing) ({exc})") from exc


@contextmanager
def rank0_first(w: World, timeout: int, what: str = "rank 0's data preparation"
                ) -> Iterator[None]:
    """Rank 0 runs the block first (it builds the manifest and image caches that the others
    then only read), then the other ranks; every rank leaves together.

    The waits happen on a gloo group of their own whose timeout is `timeout` seconds
    (`RunConfig.prepare_timeout`), not on the training group: its timeout (NCCL's default,
    10 minutes) is for collectives of a training step, and a first NIH cache build takes
    longer. Leaving together means no training collective waits on another rank's
    preparation either.
    """
    if w.size == 1:
        yield
        return
    group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout))
    try:
        if not w.main:
            _prepare_barrier(group, w, timeout, what)  # rank 0 has built
        yield
        if w.main:
            _prepare_barrier(group, w, timeout, what)  # the others may read now
        _prepare_barrier(group, w, timeout, what)      # every rank has its data
    finally:
        dist.destroy_process_group(group)


class ShardSampler(Sampler[int]):
    """This rank's disjoint share of every epoch of any base sampler.

    Every rank iterates the same base sampler (same seed, same epoch: the same global
    sequence) and keeps positions `rank, rank + N, ...`. `pad=False` (training) drops the
    tail that does not divide by N; `pad=True` (validation) repeats the head to fill it, and
    `gather_rows` drops those duplicates. Every rank gets the same number of indices, so the
    same number of batches. `set_epoch` reaches the base sampler.
    """

    def __init__(self, sampler: Sampler, rank: int, size: int, pad: bool = False):
        if not 0 <= rank < size:
            raise ValueError(f"rank {rank} is not in a world of {size}")
        self.sampler, self.rank, self.size, self.pad = sampler, rank, size, pad

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def global_order(self) -> list[int]:
        order = [int(i) for i in self.sampler]
        if not self.pad:
            return order[:len(order) // self.size * self.size]
        extra = (-len(order)) % self.size
        return order + (order * (extra // max(len(order), 1) + 1))[:extra]

    def __iter__(self) -> Iterator[int]:
        return iter(self.global_order()[self.rank::self.size])

    def __len__(self) -> int:
        n = len(self.sampler)
        return math.ceil(n / self.size) if self.pad else n // self.size


def _rebuild(loader: DataLoader, sampler: Sampler, batch_size: int, seed: int) -> DataLoader:
    return DataLoader(loader.dataset, batch_size=batch_size, sampler=sampler,
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                      pin_memory=loader.pin_memory, drop_last=loader.drop_last,
                      persistent_workers=loader.persistent_workers,
                      worker_init_fn=loader.worker_init_fn,
                      generator=torch.Generator().manual_seed(seed))


def shard_loaders(loaders: dict[str, DataLoader], cfg, w: World) -> dict[str, DataLoader]:
    """Per-rank train/val loaders of `batch_size / N` (test stays whole: it is evaluated
    in one process). Shuffling becomes a seeded RandomSampler shared by all ranks; the
    augmentation and worker seeds become per-rank."""
    if w.size == 1:
        return loaders
    if cfg.batch_size % w.size:
        raise LaunchError(f"batch_size={cfg.batch_size} (the global batch) does not divide "
                          f"by the {w.size} processes: use a multiple of {w.size}")
    out, per_rank = dict(loaders), cfg.batch_size // w.size
    train = loaders["train"]
    base = train.sampler
    if isinstance(base, RandomSampler):  # same permutation on every rank
        base = RandomSampler(train.dataset, generator=torch.Generator().manual_seed(cfg.seed))
    transform = getattr(train.dataset, "transform", None)
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(w.seed(cfg.seed))
    out["train"] = _rebuild(train, ShardSampler(base, w.rank, w.size), per_rank, w.seed(cfg.seed))
    val = loaders["val"]
    out["val"] = _rebuild(val, ShardSampler(SequentialSampler(val.dataset), w.rank, w.size,
                                            pad=True), per_rank, w.seed(cfg.seed))
    return out


# --- collectives (each is a no-op for one process) -------------------------------------
def gather_rows(w: World, index: torch.Tensor, *rows: torch.Tensor) -> list[torch.Tensor]:
    """All ranks' rows, each dataset index once (padding duplicates dropped), by index."""
    if w.size == 1:
        return list(rows)
    gathered = []
    for t in (index, *rows):
        parts = [torch.empty_like(t) for _ in range(w.size)]
        dist.all_gather(parts, t.contiguous())
        gathered.append(torch.cat(parts).cpu())
    _, first = np.unique(gathered[0].numpy(), return_index=True)
    keep = torch.as_tensor(first)
    return [t[keep] for t in gathered[1:]]


def from_rank0(w: World, values: Sequence[Any]) -> list[Any]:
    """Rank 0's values on every rank: one decision that every rank obeys."""
    if w.size == 1:
        return list(values)
    box = list(values)
    dist.broadcast_object_list(box, src=0)
    return box


def all_sum(w: World, values: Sequence[float], device: torch.device) -> list[float]:
    if w.size == 1:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def gather_objects(w: World, obj: Any) -> list[Any]:
    if w.size == 1:
        return [obj]
    out: list[Any] = [None] * w.size
    dist.all_gather_object(out, obj)
    return out


def barrier(w: World) -> None:
    if w.size > 1:
        dist.barrier()


@torch.no_grad()
def broadcast_buffers(w: World, module: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics and counts) on every rank."""
    if w.size == 1:
        return
    for buf in module.buffers():
        dist.broadcast(buf, src=0)
