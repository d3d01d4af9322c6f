"""Tiny training runs for tests: a real registry model (`simple_cnn`, 32 px) fitted by
`utils.training.loop.fit` on generated tensors, in seconds.

Also a script, for tests that must kill a training *process*:
    python tests/helpers_train.py CKPT_DIR OUT.pt [--epochs 6] [--sleep 0.01] [--wait-for F]
trains (resuming from CKPT_DIR/last.pt when present) and saves the final weights and the
history to OUT.pt.
"""
from __future__ import annotations

import argparse
import importlib
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `utils` importable
    sys.path.insert(0, str(ROOT))

from utils.config import RunConfig, make_config  # noqa: E402

__all__ = ["KillAfter", "Blobs", "tiny_config", "tiny_loaders", "train_tiny", "tiny_checkpoint", "main"]


class KillAfter(nn.Module):
    """BCE that raises `error` on its `n`-th training call (None: never): a run killed
    mid-epoch (KeyboardInterrupt), or a session that ends there, after the epochs before it
    saved last.pt."""

    def __init__(self, n: int | None = None, error: type[BaseException] = KeyboardInterrupt):
        super().__init__()
        self.n, self.calls, self.error, self.bce = n, 0, error, nn.BCEWithLogitsLoss()

    def forward(self, logits, target):
        if torch.is_grad_enabled():
            self.calls += 1
            if self.n is not None and self.calls >= self.n:
                raise self.error("simulated kill")
        return self.bce(logits, target)


class Blobs(Dataset):
    """1×S×S images, positives brighter in the centre; NumPy/Python noise per item (as
    augmentation draws it), so an exact resume must restore those RNGs too."""

    def __init__(self, n: int, size: int = 32, seed: int = 0, sleep: float = 0.0):
        g = torch.Generator().manual_seed(seed)
        self.labels = (torch.arange(n) % 2).float()
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size),
                                indexing="ij")
        blob = torch.exp(-(xx ** 2 + yy ** 2) * 4)
        self.images = torch.randn(n, 1, size, size, generator=g) * 0.5 + \
            self.labels.view(-1, 1, 1, 1) * blob
        self.sleep = sleep

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        if self.sleep:
            time.sleep(self.sleep)  # slows epochs down without touching the numbers
        noise = 0.05 * float(np.random.randn()) + 0.05 * random.random()
        return (self.images[i] + noise, self.labels[i:i + 1],
                {"path": f"img{i}.png", "patient_id": f"p{i}", "index": i})


def _collate(batch):
    images, targets, metas = zip(*batch)
    return torch.stack(images), torch.stack(targets), list(metas)


def tiny_config(**params) -> RunConfig:
    """simple_cnn at 32 px on the CPU, one epoch of a few steps unless overridden."""
    base = {"model": "simple_cnn", "image_size": 32, "epochs": 1, "batch_size": 8,
            "max_steps_per_epoch": 3, "lr": 1e-3, "pretrained": False, "amp": False,
            "device": "cpu", "seed": 0, "scheduler": "cosine", "monitor": "val_auroc"}
    return make_config({**base, **params}, profile="smoke")


def tiny_loaders(cfg: RunConfig, n_train: int = 48, n_val: int = 16, sleep: float = 0.0):
    """Seeded train (shuffled, drop_last: BatchNorm1d needs 2+) and val loaders."""
    train = DataLoader(Blobs(n_train, cfg.image_size, seed=0, sleep=sleep), cfg.batch_size,
                       shuffle=True, drop_last=True, collate_fn=_collate,
                       generator=torch.Generator().manual_seed(cfg.seed))
    val = DataLoader(Blobs(n_val, cfg.image_size, seed=1), cfg.batch_size, collate_fn=_collate)
    return train, val


def train_tiny(cfg: RunConfig, ckpt_dir: str | Path | None, sleep: float = 0.0,
               restore_best: bool = True):
    """`(model, history)` after `fit` with the registry's simple_cnn."""
    from utils.models.registry import create_model
    from utils.runtime import seed_everything
    from utils.training.loop import fit

    seed_everything(cfg.seed)  # as notebook.setup does: the initial weights are seeded too
    model = create_model(cfg.model, 1, pretrained=False, image_size=cfg.image_size)
    for module in model.modules():
        # simple_cnn's activations shrink ~1e4-fold through its 10 convs at init, so with
        # BatchNorm's running statistics at their defaults (momentum 0.1: ~200 steps to
        # forget var=1) eval-mode outputs do not depend on the input yet. A cumulative
        # average makes a few steps enough for predictions that differ between images.
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None
    train, val = tiny_loaders(cfg, sleep=sleep)
    hist = fit(model, train, val, cfg, loss_fn=torch.nn.BCEWithLogitsLoss(),
               ckpt_dir=ckpt_dir, device="cpu", restore_best=restore_best,
               meta={"class_names": ["Pneumonia"], "synthetic": True})
    return model, hist


def tiny_checkpoint(ckpt_dir: str | Path, threshold: float | None = 0.4) -> Path:
    """A `best.pt` as a finished run leaves it (with a validation-chosen threshold)."""
    from utils.training.checkpoint import update_checkpoint

    train_tiny(tiny_config(), ckpt_dir)
    best = Path(ckpt_dir) / "best.pt"
    if threshold is not None:
        update_checkpoint(best, threshold=threshold, threshold_policy="max_f1")
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("ckpt_dir")
    parser.add_argument("out")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds per item")
    parser.add_argument("--wait-for", default="", metavar="FILE",
                        help="import everything, then start only once FILE exists (lets a "
                             "test overlap this process's start-up with other work)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # same kernels in every process: bit-identical results
    for module in ("utils.models", "utils.training.loop"):  # the slow imports happen before the gate
        importlib.import_module(module)

    deadline = time.monotonic() + 300
    while args.wait_for and not Path(args.wait_for).exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {args.wait_for}")
        time.sleep(0.02)
    cfg = tiny_config(epochs=args.epochs, max_steps_per_epoch=0)
    model, hist = train_tiny(cfg, args.ckpt_dir, sleep=args.sleep, restore_best=False)
    torch.save({"state": model.state_dict(), "history": hist.to_dict()}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
