"""What `fit` saves and how it continues: the checkpoints' payloads, resuming from `last.pt`
(which settings must match, the RNG state, across process counts) and the session deadline
of `run_all.py --stop-after`. Split out of `loop.py`, which drives the epochs."""
from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any

from ..config import RunConfig
from . import distributed as dist_
from . import rngstate
from .checkpoint import load_checkpoint, plain
from .history import History

__all__ = ["STOP_ENV", "SessionDeadline", "deadline_passed", "RESUME_KEYS", "RESUME_META_KEYS",
           "payloads", "resume"]

# run_all --stop-after: the deadline (epoch seconds) after which fit stops at an epoch's end
STOP_ENV = "CXR_STOP_AT"


class SessionDeadline(RuntimeError):
    """The hosted session's time is up (`run_all.py --stop-after`): `last.pt` holds the
    finished epochs and a re-run (or `--resume-from` in the next session) continues them.
    run_all recognises this name in the notebook's error and marks the step interrupted."""


def deadline_passed(world) -> bool:
    """Rank 0 compares the clock with `CXR_STOP_AT` and every rank obeys its answer, so all
    stop at the same epoch (their clocks and epoch ends differ by a little)."""
    value = os.environ.get(STOP_ENV, "").strip()
    try:
        due = float(value) if value else None
    except ValueError:
        warnings.warn(f"{STOP_ENV}={value!r} is not epoch seconds: ignored", stacklevel=3)
        due = None
    return due is not None and bool(dist_.from_rank0(world, [time.time() >= due])[0])


# A saved run is resumed only if these settings are unchanged: they shape the trajectory.
RESUME_KEYS = ("model", "dataset", "task", "variant", "image_size", "max_images",
               "val_fraction", "test_fraction", "split_seed", "pretrained", "dropout",
               "trainable_from", "init_checkpoint", "epochs", "batch_size", "lr", "weight_decay", "optimizer",
               "scheduler", "loss", "pos_weight", "focal_gamma", "focal_alpha", "sampler",
               "sampler_cap", "augmentation", "early_stopping", "monitor", "grad_clip",
               "max_steps_per_epoch", "seed", "sync_bn", "ema_decay", "warmup_epochs")
_DEFAULTS = RunConfig().to_dict()
# `meta` fields that identify the inputs beyond the config (set by utils.study.experiment.train)
RESUME_META_KEYS = ("data_fingerprint", "init_fingerprint", "weights_fingerprint")


def payloads(model, loop: Any, hist, epoch, num_classes, meta, rng: list) -> tuple[dict, dict]:
    """(best.pt, last.pt): best holds what inference, the gallery and `init_checkpoint`
    need; last adds the optimizer, scheduler, scaler and every rank's RNG state."""
    info, cfg = getattr(model, "info", None), loop.cfg
    names = meta.get("class_names") or (["Pneumonia"] if num_classes == 1 else
                                        [f"class_{k}" for k in range(num_classes)])
    best = {**plain(meta), "model_name": getattr(info, "name", cfg.model),
            "model_state": loop.saved.state_dict(), "epoch": epoch, "history": hist.to_dict(),
            "best_score": hist.best_score, "config": cfg.to_dict(), "num_classes": num_classes,
            "class_names": list(names), "input_size": cfg.image_size,
            "mean": plain(getattr(info, "mean", None)), "std": plain(getattr(info, "std", None)),
            "distributed": loop.world.as_dict()}
    last = {**best, "optimizer_state": loop.opt.state_dict(), "steps": loop.steps,
            # how this run was resumed so far: an inexact resume stays on the record
            "resume": getattr(hist, "resume", None),
            # with an EMA, model_state holds the EMA weights; a resume needs the live ones
            "train_state": model.state_dict() if loop.ema is not None else None,
            "scheduler_state": loop.sched.state_dict() if loop.sched is not None else None,
            "scaler_state": loop.scaler.state_dict() if loop.scaler.is_enabled() else None,
            "rng_state": rng[0], **({"rank_rng_states": rng} if len(rng) > 1 else {})}
    return best, last


def resume(last: Path, model, loop: Any, loaders: tuple, meta: dict) -> History | None:
    ckpt, cfg, world = load_checkpoint(last), loop.cfg, loop.world
    saved = {k: ckpt["config"].get(k, _DEFAULTS[k]) for k in RESUME_KEYS}  # older: defaults
    changed = [f"{k}: {saved[k]!r} -> {getattr(cfg, k)!r}"
               for k in RESUME_KEYS if saved[k] != getattr(cfg, k)]
    saved_size = (ckpt.get("distributed") or {}).get("world_size", 1)
    # what the caller says identifies the data (and the starting weights) must match too;
    # a checkpoint from before these fields existed resumes, with a warning
    changed += [f"{k}: {ckpt[k]!r} -> {meta[k]!r}" for k in RESUME_META_KEYS
                if k in meta and k in ckpt and ckpt[k] != meta[k]]
    unknown = [k for k in RESUME_META_KEYS if k in meta and k not in ckpt]
    if unknown and not changed:
        warnings.warn(f"{last} does not record {unknown} (written by an older version): "
                      f"resuming on trust; delete it to start fresh if the data changed",
                      stacklevel=3)
    if changed:
        warnings.warn(f"{last} was trained with other settings ({'; '.join(changed)}); "
                      f"starting fresh and overwriting it", stacklevel=3)
        return None
    model.load_state_dict(ckpt.get("train_state") or ckpt["model_state"])
    if loop.ema is not None:
        loop.ema.module.load_state_dict(ckpt["model_state"])
    loop.steps = int(ckpt.get("steps", 0))
    loop.opt.load_state_dict(ckpt["optimizer_state"])
    if loop.sched is not None and ckpt["scheduler_state"] is not None:
        loop.sched.load_state_dict(ckpt["scheduler_state"])
    if loop.scaler.is_enabled() and ckpt["scaler_state"]:
        loop.scaler.load_state_dict(ckpt["scaler_state"])
    epoch = int(ckpt["epoch"])
    if saved_size == world.size:
        rngstate.restore(ckpt["rank_rng_states"][world.rank] if world.size > 1
                         else ckpt["rng_state"], loaders)
        exact = None
    else:  # every epoch is sharded otherwise: the saved per-rank states do not map
        exact = f"world size {saved_size} -> {world.size}"
        rngstate.reseed(loaders, world.seed(cfg.seed), epoch)
        if world.main:
            warnings.warn(f"{last} was trained on {saved_size} process(es), this run has "
                          f"{world.size}: resuming from epoch {epoch} with its weights, "
                          f"optimizer, schedule and history, but the data order and "
                          f"augmentations from here on differ from an uninterrupted run (not "
                          f"bit-exact; recorded in the results JSON)", stacklevel=3)
    hist = History.from_dict(ckpt["history"])
    hist.resumed_from = epoch
    hist.resume = _resume_record(epoch, exact, ckpt.get("resume"))
    if world.main:
        print(f"resumed {last} at epoch {hist.resumed_from}/{cfg.epochs}", flush=True)
    return hist


def _resume_record(epoch: int, reason: str | None, before: dict | None) -> dict:
    """`{from_epoch, bit_exact, reason}`; a run once resumed inexactly stays inexact."""
    if reason is None and before and not before.get("bit_exact", True):
        reason = f"an earlier resume: {before.get('reason')}"
    return {"from_epoch": epoch, "bit_exact": reason is None, "reason": reason}
