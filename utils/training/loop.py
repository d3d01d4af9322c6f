"""`fit()`: a training loop that knows nothing of its model (minGPT's trainer).

Batches are `(images, targets, metas)`; the model maps images to logits; `loss_fn` takes
logits. Options, not copies of the loop: AdamW/Adam/SGD, cosine (stepped per *batch*,
annealed to 0 over `epochs × steps_per_epoch`) / plateau (per epoch, on `cfg.monitor`,
factor 0.1, patience 2) / step (per epoch, ×0.1 every `max(1, epochs // 3)` epochs)
schedules, early stopping and the best checkpoint on `cfg.monitor`, gradient clipping,
mixed precision on CUDA, channels_last, `torch.compile`, a linear warm-up and an EMA of the
weights (`utils.training.schedules`), checkpoints with resume.

Resume is exact on CPU with `num_workers=0`: the Python, NumPy, torch and CUDA RNG states,
every `torch.Generator` the loaders hold (DataLoader's `generator`, a sampler's
`generator`, e.g. `WeightedRandomSampler(generator=g)`) and the augmentation transforms'
own generators are saved in `last.pt` after each epoch and restored (`utils.training.rngstate`).
Limits: worker processes are reseeded from those states each epoch, so with workers it is
exact only when the dataset seeds NumPy per worker (`worker_init_fn`);
`persistent_workers=True` and cuDNN's non-deterministic kernels are not covered.

Under torchrun (`utils.training.distributed`) the same loop runs in every process: the model is
wrapped in DistributedDataParallel, validation gathers every image once, rank 0's
validation scores drive every decision, rank 0 alone writes checkpoints (the others wait),
and each rank's generator states go into `last.pt`, so a resume at the same world size is
exact too. A resume with another number of processes (Kaggle's 2 GPUs, then Colab's 1)
continues from the last epoch's weights, optimizer, schedule, scaler, EMA and history; the
per-rank data order cannot be carried over, so it warns, reseeds the generators for the
epoch (`rngstate.reseed`) and records `resume.bit_exact: false`. `best.pt` holds what
inference needs; `last.pt` adds what a resume needs.

No host synchronisation inside a training step (`_train_step`): the loss is summed on the
device (one `.item()` per epoch), the cumulative BatchNorm average of random-init models is
driven from a host-side counter (`schedules.BatchNormClock`) instead of torch's per-layer
`float(num_batches_tracked)`, the fused AdamW takes the GradScaler's inf check on the device.
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..config import RunConfig
from ..fileio import atomic_torch_save
from ..runtime import amp_dtype, autocast, configure_cudnn, pick_device, seed_everything
from . import distributed as dist_
from . import rngstate
from .checkpoint import load_checkpoint
from .history import HIGHER_IS_BETTER, History, log_board, open_board, print_epoch, quiet, record
from .schedules import BatchNormClock, make_ema, warmup_scheduler
from .resume_state import (RESUME_KEYS, RESUME_META_KEYS, STOP_ENV, SessionDeadline,
                           deadline_passed, payloads, resume)
from .scores import summary_scores

__all__ = ["fit", "History", "RESUME_KEYS", "RESUME_META_KEYS", "recalibrate_batchnorm",
           "TrainStep", "SessionDeadline", "STOP_ENV"]

def _optimizer(model: nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"model has no trainable parameters (trainable_from="
                         f"{cfg.trainable_from!r}); unfreeze at least the head")
    lr, _ = cfg.learning_rate()  # lr=0: 1e-3 from random init, 1e-4 fine-tuning
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    # torch's fused kernel where it has one: a ResNet-18 AdamW step on 2 CPU cores took
    # 37 ms with the default per-tensor loop, 20 ms with foreach, 6 ms fused
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return cls(params, lr=lr, weight_decay=cfg.weight_decay, fused=fused or None)


def _scheduler(opt: torch.optim.Optimizer, cfg: RunConfig, steps_per_epoch: int):
    sched = torch.optim.lr_scheduler
    if cfg.warmup_epochs > 0:  # linear warm-up, then cosine or constant (utils.training.schedules)
        return warmup_scheduler(opt, cfg, steps_per_epoch)
    if cfg.scheduler == "cosine":
        return sched.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs * steps_per_epoch))
    if cfg.scheduler == "plateau":
        mode = "max" if HIGHER_IS_BETTER[cfg.monitor] else "min"
        return sched.ReduceLROnPlateau(opt, mode=mode, factor=0.1, patience=2)
    if cfg.scheduler == "step":
        return sched.StepLR(opt, step_size=max(1, cfg.epochs // 3), gamma=0.1)
    return None


@dataclass
class _Loop:
    """What every epoch needs; built once per `fit` call."""

    net: nn.Module
    loss_fn: nn.Module
    opt: torch.optim.Optimizer
    sched: Any
    scaler: torch.amp.GradScaler
    cfg: RunConfig
    device: torch.device
    amp: bool
    channels_last: bool
    quiet: bool
    world: dist_.World = dist_.World()
    model: nn.Module | None = None       # the unwrapped model (no DDP / compile wrapper)
    ema: Any = None                      # timm ModelEmaV3 (cfg.ema_decay), else None
    steps: int = 0                       # optimizer steps so far (the EMA's warm-up clock)
    bn: BatchNormClock | None = None     # random-init BN momentum; started after a resume
    cudnn_benchmark: bool = False        # cuDNN autotuning on (CUDA, not deterministic)

    @property
    def per_batch(self) -> bool:
        """The schedule steps every batch (cosine, or any warm-up), not every epoch."""
        return self.sched is not None and (self.cfg.scheduler == "cosine" or
                                           self.cfg.warmup_epochs > 0)

    @property
    def eval_net(self) -> nn.Module:
        """What validation scores: the EMA weights when kept, else the (wrapped) network."""
        return self.ema.module if self.ema is not None else self.net

    @property
    def saved(self) -> nn.Module:
        """Whose state_dict checkpoints hold: the EMA's when kept, else the bare model."""
        return self.ema.module if self.ema is not None else self.model

    def to_device(self, images: torch.Tensor, targets: torch.Tensor | None = None):
        images = images.to(self.device, non_blocking=True)
        if self.channels_last and images.ndim == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, None if targets is None else targets.to(self.device, non_blocking=True)

    def logits(self, images: torch.Tensor, net: nn.Module | None = None) -> torch.Tensor:
        with autocast(self.device, self.amp):
            return (net or self.net)(images).float()  # the loss and sigmoid run in fp32


def _train_step(loop: _Loop, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """One optimizer step on one batch; returns the loss, detached, on the device.

    Nothing here waits for the GPU: no `.item()`/`float()` of a device tensor (tested with
    a sync-counting torch function mode; `benchmarks.gpu` counts CUDA syncs on a GPU).
    """
    cfg, opt, scaler = loop.cfg, loop.opt, loop.scaler
    if loop.bn is not None:
        loop.bn.tick()
    images, targets = loop.to_device(images, targets)
    loss = loop.loss_fn(loop.logits(images), targets)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if cfg.grad_clip > 0:
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(loop.net.parameters(), cfg.grad_clip)
    scaler.step(opt)  # fused AdamW: the scaler's inf check stays on the device
    scaler.update()
    loop.steps += 1
    if loop.ema is not None:  # every rank holds the same weights after the step
        loop.ema.update(loop.model, step=loop.steps)
    if loop.per_batch:
        loop.sched.step()
    return loss.detach()


def _train_epoch(loop: _Loop, loader, desc: str) -> tuple[float, int]:
    cfg = loop.cfg
    loop.net.train()
    loss_sum = torch.zeros((), device=loop.device)  # summed on device: one host sync per epoch
    n_images, cap = 0, cfg.max_steps_per_epoch
    total = min(len(loader), cap) if cap else len(loader)
    batches = itertools.islice(loader, cap) if cap else loader  # never reads a batch past the cap
    for images, targets, _ in tqdm(batches, total=total, desc=desc, disable=loop.quiet,
                                   leave=False):
        loss_sum += _train_step(loop, images, targets) * len(images)
        n_images += len(images)
    if n_images == 0:
        raise ValueError("the training loader yielded no batches: the train split is empty")
    if loop.world.size > 1:  # the global mean over every rank's images
        total, count = dist_.all_sum(loop.world, [loss_sum.item(), n_images], loop.device)
        return total / count, int(count)
    return (loss_sum / n_images).item(), n_images


def _same_statistics(loop: _Loop) -> None:
    """Every rank validates with rank 0's BatchNorm statistics: the ones its checkpoint saves.

    Without SyncBatchNorm each rank's running statistics (and its EMA's) follow its own
    share of the batches, and DDP broadcasts rank 0's buffers only before a forward that
    records gradients, not before validation's inference-mode forwards: each rank would
    score its share of the validation images with other statistics than the saved ones.
    Broadcast, not averaged: the validated weights are then exactly those in `best.pt`.
    Once per epoch, one collective per buffer (DenseNet-121: 363 small ones).
    """
    if loop.world.size == 1 or loop.cfg.sync_bn:  # SyncBatchNorm: the same on every rank
        return
    module = loop.ema.module if loop.ema is not None else loop.model
    dist_.broadcast_buffers(loop.world, module)


def _validate(loop: _Loop, loader) -> tuple[dict[str, float], int]:
    _same_statistics(loop)
    net = loop.eval_net
    net.eval()
    loss_sum, n, outputs, targets = torch.zeros((), device=loop.device), 0, [], []
    with torch.inference_mode():
        for images, target, _ in loader:
            images, target = loop.to_device(images, target)
            logits = loop.logits(images, net)
            loss_sum += loop.loss_fn(logits, target) * len(images)
            outputs.append(logits)
            targets.append(target)
            n += len(images)
    if n == 0:
        raise ValueError("the validation loader yielded no batches: the val split is empty")
    logits, target = torch.cat(outputs), torch.cat(targets)
    if loop.world.size > 1:  # every validation image once: gather the shards, drop padding
        index = torch.as_tensor(list(loader.sampler), device=logits.device)
        logits, target = dist_.gather_rows(loop.world, index, logits, target)
        with torch.inference_mode():
            val_loss = loop.loss_fn(logits.to(loop.device), target.to(loop.device)).item()
    else:
        val_loss = (loss_sum / n).item()
    P, Y = torch.sigmoid(logits).cpu().numpy(), target.cpu().numpy()
    scores = summary_scores(Y, P, 0.5)  # the metric code lives in utils.evaluation.metrics
    return {"val_loss": val_loss, "val_auroc": scores["auroc"],
            "val_f1": scores["f1"]}, P.shape[1]


def _build_loop(model, cfg: RunConfig, loss_fn, device, steps: int) -> _Loop:
    # CPU measured 1.0-1.2x faster too (resnet18/efficientnet_b0/densenet121, 64 px); not MPS
    channels_last = cfg.channels_last and device.type in ("cuda", "cpu")
    cudnn_benchmark = configure_cudnn(device, cfg.deterministic)
    world = dist_.world()
    if world.size > 1 and cfg.sync_bn:  # before .to(): the new modules move with the model
        nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    amp = cfg.amp and device.type == "cuda"
    opt = _optimizer(model, cfg)
    net = model
    if world.size > 1:  # averages gradients over ranks; starts every rank from rank 0's weights
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    return _Loop(net=torch.compile(net) if cfg.compile else net, loss_fn=loss_fn.to(device),
                 model=model, ema=make_ema(model, cfg), opt=opt, sched=_scheduler(opt, cfg, steps),
                 scaler=torch.amp.GradScaler("cuda", enabled=amp and amp_dtype() == torch.float16),
                 cfg=cfg, device=device, amp=amp, channels_last=channels_last,
                 quiet=quiet() or not world.main, world=world, cudnn_benchmark=cudnn_benchmark)


def fit(model: nn.Module, train_loader, val_loader, cfg: RunConfig, *, loss_fn: nn.Module,
        ckpt_dir: str | Path | None = None, meta: dict | None = None, device=None,
        restore_best: bool = True) -> History:
    """Train `model` for `cfg.epochs`, validating, checkpointing and resuming as configured.

    Args:
        ckpt_dir: where `last.pt` (every epoch) and `best.pt` (on improvement of
            `cfg.monitor`) go; `None` = no checkpoints and no resume.
        meta: extra checkpoint fields (e.g. `class_names`, `synthetic`); its
            `RESUME_META_KEYS` (a data fingerprint...) must match `last.pt`'s to resume.
        device: defaults to `pick_device(cfg.device)`.
        restore_best: leave the best epoch's weights in `model` at the end.
    Example:
        >>> hist = fit(model, loaders["train"], loaders["val"], cfg,  # doctest: +SKIP
        ...            loss_fn=build_loss(cfg, labels), ckpt_dir="checkpoints/demo")
        >>> hist.to_frame()[["epoch", "train_loss", "val_auroc"]]
    """
    device = torch.device(device) if device is not None else pick_device(cfg.device)
    world = dist_.world()
    seed_everything(world.seed(cfg.seed))  # dropout and augmentation differ per rank
    meta, ckpt_dir = dict(meta or {}), Path(ckpt_dir) if ckpt_dir is not None else None
    loop = _build_loop(model, cfg, loss_fn, device,
                       min(len(train_loader), cfg.max_steps_per_epoch or len(train_loader)))
    loaders, hist = (train_loader, val_loader), None
    if ckpt_dir is not None and world.main:  # a write a kill interrupted is never read
        for stale in ckpt_dir.glob(".*.pt.*.tmp"):
            stale.unlink(missing_ok=True)
    if ckpt_dir is not None and cfg.resume and (ckpt_dir / "last.pt").exists():
        hist = resume(ckpt_dir / "last.pt", model, loop, loaders, meta)
    if hist is None:
        hist = History(monitor=cfg.monitor)
        hist.resume = None  # a fresh run (History carries it from the checkpoint otherwise)
    best_state = None
    hist.distributed = world.as_dict()
    hist.cudnn_benchmark = loop.cudnn_benchmark
    loop.bn = BatchNormClock(model, compiled=cfg.compile)  # reads the (resumed) BN counts
    board = open_board(cfg, len(hist.epochs)) if world.main else None
    try:
        for epoch in range(len(hist.epochs) + 1, cfg.epochs + 1):
            if hist.stopped_early:
                break
            row, num_classes = _epoch(loop, epoch, train_loader, val_loader)
            improved = record(hist, cfg, row)
            if world.main:
                print_epoch(row, cfg.epochs, improved)
                log_board(board, row)
            if ckpt_dir is not None:
                rng = dist_.gather_objects(world, rngstate.capture(loaders))
                best, last = payloads(model, loop, hist, epoch, num_classes, meta, rng)
                if world.main:  # rank 0 alone writes, atomically; the others wait for it
                    if improved:
                        atomic_torch_save(best, ckpt_dir / "best.pt")
                    atomic_torch_save(last, ckpt_dir / "last.pt")
                dist_.barrier(world)
                if epoch < cfg.epochs and not hist.stopped_early and deadline_passed(world):
                    raise SessionDeadline(f"the session's deadline ({STOP_ENV}) passed: stopped "
                                          f"after epoch {epoch}/{cfg.epochs}, saved in "
                                          f"{ckpt_dir / 'last.pt'}; a re-run continues it")
            elif improved and restore_best:
                best_state = {k: v.detach().to("cpu", copy=True)
                              for k, v in loop.saved.state_dict().items()}
    finally:
        loop.bn.restore()  # momentum=None again: the model leaves marked as it came
        if board is not None:
            board.close()
    if restore_best and ckpt_dir is not None and (ckpt_dir / "best.pt").exists():
        best_state = load_checkpoint(ckpt_dir / "best.pt")["model_state"]
    if restore_best and best_state is not None:
        model.load_state_dict(best_state)
    elif loop.ema is not None:  # the last epoch's weights are the EMA's
        model.load_state_dict(loop.ema.module.state_dict())
    return hist


class TrainStep:
    """`fit`'s optimizer step on its own: the same optimizer (fused AdamW), AMP/GradScaler,
    channels_last, cuDNN and BatchNorm policy, for benchmarks that must time what `fit` runs
    rather than a look-alike (`benchmarks.gpu`).

    Example:
        >>> step = TrainStep(model, cfg, nn.BCEWithLogitsLoss(), "cuda")  # doctest: +SKIP
        >>> loss = step(images, targets); logits = step.infer(images)      # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, cfg: RunConfig, loss_fn: nn.Module, device,
                 steps_per_epoch: int = 1):
        self.loop = _build_loop(model, cfg, loss_fn, torch.device(device), steps_per_epoch)
        self.loop.bn = BatchNormClock(model, compiled=cfg.compile)

    @property
    def dtype(self) -> torch.dtype:
        """The autocast dtype the step computes in (float32 without AMP)."""
        return amp_dtype() if self.loop.amp else torch.float32

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if not self.loop.net.training:  # after `infer`; fit sets it once per epoch
            self.loop.net.train()
        return _train_step(self.loop, images, targets)

    def infer(self, images: torch.Tensor) -> torch.Tensor:
        """Validation's forward: eval mode, inference mode, the same autocast."""
        net = self.loop.eval_net.eval()
        with torch.inference_mode():
            return self.loop.logits(self.loop.to_device(images)[0], net)

    def close(self) -> None:
        self.loop.bn.restore()


def _epoch(loop: _Loop, epoch: int, train_loader, val_loader) -> tuple[dict, int]:
    """Train and validate once; the row's validation scores are rank 0's on every rank."""
    cfg = loop.cfg
    if hasattr(getattr(train_loader, "sampler", None), "set_epoch"):
        train_loader.sampler.set_epoch(epoch)  # per-epoch draws survive a resume
    lr, t0 = loop.opt.param_groups[0]["lr"], time.perf_counter()
    train_loss, n_img = _train_epoch(loop, train_loader, f"epoch {epoch}/{cfg.epochs}")
    t_train = time.perf_counter() - t0
    val, num_classes = _validate(loop, val_loader)
    val = dist_.from_rank0(loop.world, [val])[0]  # one decision (best, early stop, plateau)
    seconds = time.perf_counter() - t0
    if cfg.scheduler == "plateau" and not math.isnan(val[cfg.monitor]):
        loop.sched.step(val[cfg.monitor])
    elif cfg.scheduler == "step":
        loop.sched.step()
    return {"epoch": epoch, "train_loss": train_loss, **val, "lr": lr, "seconds": seconds,
            "images_per_second": n_img / t_train, "train_images": n_img,
            "val_seconds": seconds - t_train}, num_classes


def recalibrate_batchnorm(model: nn.Module, loader, batches: int = 20, device=None) -> bool:
    """Recompute BatchNorm running statistics for the final weights ("precise BN").

    After a short run from random init the running averages still mix in early weights'
    statistics, and eval-mode outputs drift (measured on demo data, resnet18 from scratch:
    mean test probability 0.02 before, 0.56 after; AUROC 0.917 → 0.941). Uses torch's
    `update_bn` over `batches` training batches; returns False when the model has no BN.
    """
    from itertools import islice

    from torch.optim.swa_utils import update_bn

    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return False
    device = torch.device(device) if device is not None else next(model.parameters()).device
    update_bn(islice(loader, batches), model, device=device)
    model.eval()
    return True

