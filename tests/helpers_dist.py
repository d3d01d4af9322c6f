"""One optimizer step of `utils.training.loop.fit`, for tests that compare N processes with one.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/helpers_dist.py OUT.pt
    python tests/helpers_dist.py OUT.pt          # the same step in one process

A BatchNorm-free net (a BN layer would normalise 16 images per rank instead of 32) takes one
AdamW step on a global batch of 32 drawn by a seeded RandomSampler, then validates on 9
images (5 per rank: the 10th, rank 1's padding, repeats image 0 and must be dropped).
Rank 0 saves the weights after the step, the history and the world to OUT.pt.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from utils.training import distributed  # noqa: E402
from utils.config import make_config  # noqa: E402
from utils.training.loop import fit  # noqa: E402

__all__ = ["Separable", "NoBatchNorm", "step_config", "loaders", "main"]


class Separable(Dataset):
    """1×8×8 images, positives brighter; no randomness per item."""

    def __init__(self, n: int, seed: int, shift: float = 0.5):
        g = torch.Generator().manual_seed(seed)
        self.labels = (torch.arange(n) % 2).float()
        self.images = torch.randn(n, 1, 8, 8, generator=g) + shift * self.labels.view(-1, 1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i:i + 1], {"index": i}


def _collate(batch):
    images, targets, metas = zip(*batch)
    return torch.stack(images), torch.stack(targets), list(metas)


class NoBatchNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 64, 1))

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)))


def step_config():
    return make_config({"epochs": 1, "batch_size": 32, "max_steps_per_epoch": 1, "lr": 1e-2,
                        "optimizer": "adamw", "scheduler": "none", "device": "cpu", "seed": 5,
                        "amp": False, "num_workers": 0, "monitor": "val_loss"}, profile="full")


def loaders(cfg) -> dict[str, DataLoader]:
    train = Separable(64, seed=1)
    val = Separable(9, seed=2, shift=0.05)  # hard: AUROC < 1, so a duplicate shows
    sampler = RandomSampler(train, generator=torch.Generator().manual_seed(cfg.seed))
    return {"train": DataLoader(train, cfg.batch_size, sampler=sampler, drop_last=True,
                                collate_fn=_collate),
            "val": DataLoader(val, 16, collate_fn=_collate)}


def main(out: str) -> int:
    torch.set_num_threads(1)
    cfg = step_config()
    with distributed.process_group(cfg) as world:
        parts = distributed.shard_loaders(loaders(cfg), cfg, world)
        torch.manual_seed(0)
        model = NoBatchNorm()
        hist = fit(model, parts["train"], parts["val"], cfg, loss_fn=nn.BCEWithLogitsLoss(),
                   device="cpu", restore_best=False)
        if world.main:
            torch.save({"state": model.state_dict(), "history": hist.to_dict(),
                        "world": world.as_dict(),
                        "per_rank_batch": parts["train"].batch_size}, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
