"""Training-step throughput: `utils.training.loop.fit` against a minimal plain PyTorch loop.

    python -m benchmarks.train_step [--model resnet18] [--image-size 64] [--batch-size 32]
                                    [--steps 30] [--repeats 3] [--warmup 3] [--threads 0]
                                    [--channels-last-row] [--amp-dry-run]

Both sides train the same registry model (`create_model(..., pretrained=False)`, one
identically seeded copy each) on the same fixed in-memory random images, served as the
dataset contract's `(image, target, meta)` items through `utils.data.dataset.collate`, with
the same batch size, AdamW (lr, weight decay), BCE-with-logits loss, fp32, `num_workers=0`.

- plain: `islice(loader, N)`; `.to(device)`, forward, loss, `zero_grad`, `backward`, `step`.
- fit: `fit(cfg)` with `epochs=1`, `max_steps_per_epoch=N`, `ckpt_dir=None`, a one-batch val
  loader; its figure is `History.epochs[0]["images_per_second"]` = training images / the
  training phase's seconds (validation is timed separately and excluded; the table shows
  both, and fit's whole wall time, so the exclusion can be checked). Its cosine schedule is
  left on: it is what real runs pay.

Every contender first runs `--warmup` untimed steps (oneDNN/cuDNN kernel selection,
allocator), then the trials run interleaved `--repeats` times in ABBA order (plain, fit,
fit, plain, ...); the table holds the medians. `ratio` = fit / plain images/s at the same settings
(channels_last off on both sides, so it is fit's per-step overhead alone); goal >= 0.95.
`--channels-last-row` adds fit's default (channels_last on), for information.

On a CPU shared with other jobs, use `--threads 1`: with more intra-op threads than free
cores, OpenMP's barriers made steps 3-10x slower and erratic on the 2-core VM (both sides).

On CUDA it also measures fit's mixed-precision + channels_last path against the plain fp32
loop for resnet50 and densenet121 at 224 px. Without CUDA that comparison is not run;
`--amp-dry-run` runs its code path on the CPU with tiny settings (not a measurement).
The last line printed is exactly `ratio: X.XX`.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/train_step.py` works too
    sys.path.insert(0, str(ROOT))

__all__ = ["RandomImages", "make_loader", "plain_loop", "fit_loop", "compare", "amp_speedup",
           "main"]

LR, WEIGHT_DECAY = 1e-3, 1e-4   # the demo profile's lr and the default weight decay
AMP_MODELS = ("resnet50", "densenet121")


class RandomImages(Dataset):
    """Fixed in-memory random 1×S×S images with binary targets: no decoding, no augmentation,
    so the loader costs the same on both sides and the model step dominates."""

    def __init__(self, n: int, image_size: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 1, image_size, image_size, generator=g)
        self.targets = (torch.rand(n, 1, generator=g) < 0.5).float()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], self.targets[i], {"index": i}


def make_loader(n_images: int, image_size: int, batch_size: int, device: torch.device,
                seed: int = 0) -> DataLoader:
    """The shared loader: in order, `num_workers=0`, the project's `collate`."""
    from utils.data.dataset import collate

    return DataLoader(RandomImages(n_images, image_size, seed), batch_size=batch_size,
                      shuffle=False, num_workers=0, collate_fn=collate,
                      pin_memory=device.type == "cuda")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_loop(model: nn.Module, loader: DataLoader, steps: int,
               device: torch.device) -> tuple[int, float]:
    """The reference loop, nothing but the step itself; returns (images, seconds)."""
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    loss_fn, n, loss = nn.BCEWithLogitsLoss(), 0, None
    _sync(device)
    start = time.perf_counter()
    for images, targets, _ in itertools.islice(loader, steps):
        images, targets = images.to(device), targets.to(device)
        loss = loss_fn(model(images), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += len(images)
    if loss is not None:
        loss.item()  # one host sync at the end, as fit's epoch mean
    _sync(device)
    return n, time.perf_counter() - start


def fit_loop(model: nn.Module, loader: DataLoader, val_loader: DataLoader, steps: int,
             device: torch.device, *, channels_last: bool = False,
             amp: bool = False) -> dict[str, float]:
    """One `fit` epoch of `steps` batches; its own train-phase timing plus the wall time."""
    from utils.config import make_config
    from utils.training.loop import fit

    cfg = make_config({"epochs": 1, "max_steps_per_epoch": steps, "optimizer": "adamw",
                       "lr": LR, "weight_decay": WEIGHT_DECAY, "channels_last": channels_last,
                       "amp": amp, "resume": False, "device": device.type}, profile="demo")
    _sync(device)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # its one epoch line per call
        hist = fit(model, loader, val_loader, cfg, loss_fn=nn.BCEWithLogitsLoss(),
                   ckpt_dir=None, device=device, restore_best=False)
    wall = time.perf_counter() - start
    row = hist.epochs[0]
    return {"images": row["train_images"], "seconds": row["train_images"] /
            row["images_per_second"], "val_seconds": row["val_seconds"], "wall": wall}


def _contenders(model_name: str, image_size: int, device: torch.device,
                fits: dict[str, dict]) -> list[tuple[str, Callable]]:
    """(label, run(loader, val_loader, steps) -> dict) with one seeded model copy each."""
    from utils.models.registry import create_model

    def model() -> nn.Module:
        torch.manual_seed(0)
        return create_model(model_name, 1, pretrained=False, image_size=image_size)

    def plain(m):
        def run(loader, val_loader, steps):
            n, sec = plain_loop(m, loader, steps, device)
            return {"images": n, "seconds": sec, "val_seconds": float("nan"), "wall": sec}
        return run

    def fitter(m, options):
        return lambda loader, val_loader, steps: fit_loop(m, loader, val_loader, steps,
                                                          device, **options)

    return [("plain PyTorch loop (fp32)", plain(model()))] + [
        (label, fitter(model(), options)) for label, options in fits.items()]


def compare(model_name: str, image_size: int, batch_size: int, steps: int, repeats: int,
            device: torch.device, fits: dict[str, dict] | None = None,
            warmup: int = 3) -> list[dict]:
    """Warm up every contender, then time them interleaved; one row (medians) each.

    Args:
        fits: label -> `fit_loop` options (`channels_last`, `amp`); default: fit at the plain
            loop's settings.
        warmup: untimed steps per contender before the trials.
    Example:
        >>> rows = compare("simple_cnn", 32, 4, 2, 1, torch.device("cpu"))  # doctest: +SKIP
    """
    fits = fits if fits is not None else {"fit (fp32, channels_last off)":
                                          {"channels_last": False}}
    loader = make_loader(steps * batch_size, image_size, batch_size, device)
    val_loader = make_loader(batch_size, image_size, batch_size, device, seed=1)
    contenders = _contenders(model_name, image_size, device, fits)
    for _, run in contenders:
        run(loader, val_loader, max(1, warmup))  # untimed
    trials: dict[str, list[dict]] = {label: [] for label, _ in contenders}
    for r in range(repeats):  # ABBA order: a drift in the machine's load hits both sides
        for label, run in (contenders if r % 2 == 0 else contenders[::-1]):
            trials[label].append(run(loader, val_loader, steps))
    return [_median_row(label, model_name, image_size, batch_size, ts)
            for label, ts in trials.items()]


def _median_row(label: str, model: str, size: int, batch: int, trials: list[dict]) -> dict:
    rates = [t["images"] / t["seconds"] for t in trials]
    return {"loop": label, "model": model, "size": size, "batch": batch,
            "images": trials[0]["images"], "rate": statistics.median(rates),
            "rates": rates, "seconds": statistics.median(t["seconds"] for t in trials),
            "val_seconds": statistics.median(t["val_seconds"] for t in trials),
            "wall": statistics.median(t["wall"] for t in trials)}


def amp_speedup(models: tuple[str, ...], image_size: int, batch_size: int, steps: int,
                repeats: int, device: torch.device, warmup: int = 3) -> list[dict]:
    """fit's mixed-precision + channels_last path vs the plain fp32 loop, per model.

    On the CPU `amp` is ignored by fit (bf16 autocast is CUDA-only here), so a CPU run only
    exercises the code path. Returns one row per model with `speedup` = fit / plain.
    """
    out = []
    for name in models:
        plain, fast = compare(name, image_size, batch_size, steps, repeats, device,
                              {"fit (AMP + channels_last)": {"channels_last": True,
                                                             "amp": True}}, warmup)
        out.append({**fast, "plain_rate": plain["rate"], "speedup": fast["rate"] / plain["rate"]})
    return out


def print_table(rows: list[dict]) -> None:
    print(f"{'loop':<34} {'model':<12} {'size':>4} {'batch':>5} {'images':>6} {'images/s':>9} "
          f"{'train s':>8} {'val s':>6} {'fit wall s':>10}  per-trial images/s")
    for r in rows:
        val = "" if r["val_seconds"] != r["val_seconds"] else f"{r['val_seconds']:.2f}"
        wall = "" if not val else f"{r['wall']:.2f}"
        print(f"{r['loop']:<34} {r['model']:<12} {r['size']:>4} {r['batch']:>5} "
              f"{r['images']:>6} {r['rate']:>9.1f} {r['seconds']:>8.2f} {val:>6} {wall:>10}  "
              + ", ".join(f"{x:.1f}" for x in r["rates"]))


def _amp_section(args, device: torch.device) -> None:
    if device.type == "cuda":
        print(f"\nmixed precision + channels_last (fit) vs plain fp32 loop on "
              f"{torch.cuda.get_device_name(device)}, {args.amp_image_size} px, "
              f"batch {args.batch_size}:")
        rows = amp_speedup(AMP_MODELS, args.amp_image_size, args.batch_size, args.steps,
                           args.repeats, device, args.warmup)
    elif args.amp_dry_run:
        print("\nno GPU (CUDA unavailable): mixed-precision comparison DRY RUN on the CPU, "
              "tiny settings, amp ignored by fit on CPU - NOT a measurement:")
        rows = amp_speedup(AMP_MODELS, 32, 2, 1, 1, device, warmup=1)
    else:
        print("\nno GPU (CUDA unavailable): the mixed-precision + channels_last comparison "
              f"({', '.join(AMP_MODELS)} at {args.amp_image_size} px) was not run; "
              "--amp-dry-run exercises its code path on the CPU")
        return
    for r in rows:
        print(f"  {r['model']:<12} plain fp32 {r['plain_rate']:8.1f} images/s   "
              f"fit AMP+channels_last {r['rate']:8.1f} images/s   speed-up {r['speedup']:.2f}x")


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet18", help="a utils.models registry name")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per trial")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved trials (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per contender")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads; 0 = torch's default (1 on a busy CPU)")
    parser.add_argument("--channels-last-row", action="store_true",
                        help="also time fit's default (channels_last on)")
    parser.add_argument("--amp-image-size", type=int, default=224)
    parser.add_argument("--amp-dry-run", action="store_true",
                        help="without CUDA, run the AMP comparison's code path on tiny inputs")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    args = parser.parse_args(argv)
    from utils.runtime import pick_device

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, load average {load}; {args.steps} steps x {args.repeats} "
          f"interleaved trials after {args.warmup} warm-up steps each")
    fits = {"fit (fp32, channels_last off)": {"channels_last": False}}
    if args.channels_last_row:
        fits["fit (defaults: channels_last on)"] = {"channels_last": True}
    rows = compare(args.model, args.image_size, args.batch_size, args.steps, args.repeats,
                   device, fits, args.warmup)
    print_table(rows)
    ratio = rows[1]["rate"] / rows[0]["rate"]
    if args.channels_last_row:
        print(f"fit's defaults (channels_last) / plain: {rows[2]['rate'] / rows[0]['rate']:.2f}")
    _amp_section(args, device)
    print("goal: ratio >= 0.95 (fit / plain images/s, same settings)")
    print(f"ratio: {ratio:.2f}")
    return ratio


if __name__ == "__main__":
    main()
