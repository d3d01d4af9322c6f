"""Workers for tests/test_gpu_path.py's gloo tests (2 CPU processes under torchrun, or one).

    torchrun --standalone --nproc-per-node 2 tests/helpers_gpu_path.py bn OUT
        a BatchNorm net with an EMA trains 2 steps on 2 ranks (no SyncBatchNorm); each rank
        saves the BN buffers it validated with to OUT.rank<r>.pt
    torchrun ... tests/helpers_gpu_path.py resume CKPT_DIR EPOCHS OUT   (or plain python)
        `fit` for EPOCHS epochs with checkpoints in CKPT_DIR (resuming from its last.pt);
        rank 0 saves the history, its resume record and the weights to OUT
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

ROOT = Path(__file__).resolve().parents[1]
for folder in (ROOT, ROOT / "tests"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from helpers_dist import NoBatchNorm, Separable, _collate, step_config  # noqa: E402
from helpers_train import KillAfter  # noqa: E402
from utils.training import distributed  # noqa: E402
from utils.config import make_config  # noqa: E402
from utils.training.loop import fit  # noqa: E402

__all__ = ["BatchNormNet", "bn_main", "resume_main"]


class BatchNormNet(nn.Module):
    """Conv + BatchNorm with the cumulative average a random-init registry model has."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4, momentum=None)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 64, 1))

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))))


def _loaders(cfg, world):
    train, val = Separable(64, seed=1), Separable(9, seed=2, shift=0.05)
    sampler = RandomSampler(train, generator=torch.Generator().manual_seed(cfg.seed))
    loaders = {"train": DataLoader(train, cfg.batch_size, sampler=sampler, drop_last=True,
                                   collate_fn=_collate),
               "val": DataLoader(val, 16, collate_fn=_collate)}
    return distributed.shard_loaders(loaders, cfg, world)


def bn_main(out: str) -> int:
    cfg = make_config({"epochs": 1, "batch_size": 32, "max_steps_per_epoch": 2, "lr": 1e-2,
                       "scheduler": "none", "device": "cpu", "seed": 5, "amp": False,
                       "num_workers": 0, "ema_decay": 0.5, "monitor": "val_loss"},
                      profile="full")
    with distributed.process_group(cfg) as world:
        parts = _loaders(cfg, world)
        torch.manual_seed(0)
        model = BatchNormNet()
        # each rank's share of the images differs: shift one rank's so its statistics do too
        parts["train"].dataset.images += world.rank
        fit(model, parts["train"], parts["val"], cfg, loss_fn=nn.BCEWithLogitsLoss(),
            device="cpu", restore_best=False)  # the model ends with the EMA's weights
        torch.save({k: v for k, v in model.state_dict().items() if k.startswith("bn.")},
                   f"{out}.rank{world.rank}.pt")
    return 0


class _Stop(Exception):
    """The end of a session: raised by `KillAfter` in every rank at the same step."""


def resume_main(ckpt_dir: str, stop_after: int, out: str) -> int:
    """Two epochs of 2 steps; `stop_after=1` ends the session in epoch 2 (last.pt holds
    epoch 1), 0 runs to the end, resuming from last.pt when there is one."""
    cfg = make_config({**step_config().to_dict(), "epochs": 2, "step": "resume",
                       "max_steps_per_epoch": 2}, profile="full")
    loss = KillAfter(2 * stop_after + 1 if stop_after else None, error=_Stop)
    with distributed.process_group(cfg) as world, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parts = _loaders(cfg, world)
        torch.manual_seed(0)
        model = NoBatchNorm()
        try:
            hist = fit(model, parts["train"], parts["val"], cfg, loss_fn=loss,
                       ckpt_dir=ckpt_dir, device="cpu", restore_best=False)
        except _Stop:
            return 0
        if world.main:
            torch.save({"history": hist.to_dict(), "resume": hist.resume,
                        "world": world.as_dict(), "state": model.state_dict(),
                        "warnings": [str(w.message) for w in caught]}, out)
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[1] == "bn":
        sys.exit(bn_main(sys.argv[2]))
    sys.exit(resume_main(sys.argv[2], int(sys.argv[3]), sys.argv[4]))
