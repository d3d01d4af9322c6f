"""Input-pipeline throughput: the study's ImageFolder pipeline vs this project's uint8 cache.

    python -m benchmarks.input_pipeline [--epochs-images 500] [--workers 2] [--batch-size 32]

Both pipelines deliver augmented, normalised 224×224 training batches from the same real
full-resolution X-rays (shared/data/fullres), with the same DataLoader settings (workers,
batch size, shuffle, persistent workers).

(a) study: `ImageFolder` + `Resize((224, 224))`, `RandomRotation(20)`,
    `RandomHorizontalFlip()`, `ToTensor()`, `Normalize(...)`: every epoch decodes each
    full-resolution file again.
(b) cached: `build_cache(..., size=224)` once (timed separately), then `CXRDataset(...,
    cache=...)` + `build_transform("basic", 224, ...)` (flip, rotation/shift): albumentations
    (cv2, constant border) on 224×224 uint8.
(c) only with CUDA: the cache delivers uint8 batches and the rotation + flip run per image
    on the GPU, in batches (`gpu_augment`).

Prints a table, then the ratios two ways: steady state (the cache already built, as every
run after the first finds it) and with the cache build counted, for one epoch over the files
and for the full profile's epochs; last, exactly one line `ratio: X.XX` (the steady-state
cached / study images per second).

    python -m benchmarks.input_pipeline --transfer [--repeats 3] [--workers 2]

compares instead what crosses from the loader workers to the training loop (issue 24.8):
(b) normalised float32 batches, the dataset contract's items, against (d) the same cache
and augmentation stopping before normalisation (uint8 items, a quarter of the bytes through
`/dev/shm` and pinned memory) normalised per batch after `.to(device)`. Both interleaved
`--repeats` times (ABBA), with (d) without its normalisation for information (the transfer
alone); the last line is `ratio: X.XX` = (d) / (b) images per second.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/input_pipeline.py` works too
    sys.path.insert(0, str(ROOT))

__all__ = ["shared_data_root", "fullres_manifest", "study_dataset", "cached_dataset",
           "uint8_dataset", "normalise_after_transfer", "time_epoch", "gpu_augment",
           "ratio_with_build", "transfer_rows", "main"]

SIZE = 224
STUDY_MEAN, STUDY_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]   # ImageNet, as the study
GRAY_MEAN, GRAY_STD = 0.449, 0.226                                     # its grey-level average


def shared_data_root() -> Path:
    """`<repo>/../shared/data`, or `$CXR_SHARED_DATA`; exit with a message when absent."""
    root = Path(os.environ.get("CXR_SHARED_DATA", ROOT.parent / "shared" / "data"))
    if not (root / "fullres" / "labels.csv").exists():
        sys.exit(f"input_pipeline: real images not found at {root / 'fullres'}; set "
                 f"CXR_SHARED_DATA to the shared data folder (it holds fullres/images and "
                 f"fullres/labels.csv)")
    return root


def fullres_manifest(root: Path) -> pd.DataFrame:
    """The full-resolution images as a manifest (the data contract's columns)."""
    labels = pd.read_csv(root / "fullres" / "labels.csv")
    paths = [str(root / "fullres" / "images" / f) for f in labels["filename"]]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        sys.exit(f"input_pipeline: {len(missing)} files listed in labels.csv are missing, "
                 f"e.g. {missing[0]}")
    return pd.DataFrame({
        "path": paths, "patient_id": labels["patientid"].astype(str), "split": "train",
        "label": labels["pneumonia"].astype(int), "boxes": [[] for _ in paths],
        "width": 0, "height": 0, "source": "fullres", "synthetic": False})


def study_dataset(manifest: pd.DataFrame, tmp: Path, repeats: int) -> Dataset:
    """ImageFolder over a tree of symlinks (class from `label`), each file `repeats` times."""
    from torchvision import datasets, transforms

    for r in range(repeats):
        for path, label in zip(manifest["path"], manifest["label"]):
            folder = tmp / ("PNEUMONIA" if label else "NORMAL")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"r{r}_{Path(path).name}").symlink_to(path)
    tf = transforms.Compose([
        transforms.Resize((SIZE, SIZE)), transforms.RandomRotation(20),
        transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize(STUDY_MEAN, STUDY_STD)])
    return datasets.ImageFolder(str(tmp), transform=tf)


def cached_dataset(manifest: pd.DataFrame, cache, repeats: int, transform) -> Dataset:
    """CXRDataset reading the cache, concatenated `repeats` times (one cache, no re-decode)."""
    from utils.data.dataset import CXRDataset

    one = CXRDataset(manifest, ["Pneumonia"], transform=transform, cache=cache)
    return ConcatDataset([one] * repeats)


class _Uint8Items(Dataset):
    """CXRDataset's reading and augmentation, stopping before the normalisation: uint8
    `1×S×S` items (what a uint8 loader would carry), the same target and index."""

    def __init__(self, base, transform):
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        import numpy as np

        image = self.transform(image=self.base._read(i))["image"]
        return (torch.from_numpy(np.ascontiguousarray(image))[None],
                torch.from_numpy(self.base.labels[i].copy()), {"index": i})


def uint8_dataset(manifest: pd.DataFrame, cache, repeats: int, augmentation: str = "basic",
                  size: int = SIZE) -> Dataset:
    """A cached pipeline's augmentation without `Normalize`: uint8 items."""
    import albumentations as A

    from utils.data.dataset import CXRDataset
    from utils.data.transforms import AUGMENTATIONS

    one = CXRDataset(manifest, ["Pneumonia"], transform=None, cache=cache)
    return ConcatDataset([_Uint8Items(one, A.Compose(AUGMENTATIONS[augmentation](size)))] *
                         repeats)


def normalise_after_transfer(mean: float, std: float):
    """uint8 batch on the device → the float32 the model takes: `(x / 255 - mean) / std`."""
    return lambda x: x.float().sub_(255.0 * mean).div_(255.0 * std)


def time_epoch(loader: DataLoader, device: torch.device, warmup_batches: int = 2,
               on_batch=None) -> tuple[int, float]:
    """(images, seconds) for one full epoch, after a short warm-up that starts the workers."""
    it = iter(loader)
    for _ in range(warmup_batches):
        next(it)
    del it  # persistent workers: the next iter() discards what the warm-up prefetched
    n = 0
    start = time.perf_counter()
    for batch in loader:
        images = batch[0].to(device, non_blocking=True)
        if on_batch is not None:
            images = on_batch(images)
        n += images.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n, time.perf_counter() - start


def gpu_augment(batch: torch.Tensor, size: int, mean: float, std: float) -> torch.Tensor:
    """uint8 B×1×S×S on the device → rotated (±20°, per image), flipped, normalised floats.

    Hand-written with affine_grid because torchvision's batched transforms draw one angle
    per batch, and kornia is not a dependency.
    """
    x = batch.float().div_(255.0)
    b = x.shape[0]
    angle = (torch.rand(b, device=x.device) * 2 - 1) * math.radians(20)
    flip = torch.where(torch.rand(b, device=x.device) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos * flip, -sin, torch.zeros_like(cos)], 1),
                         torch.stack([sin * flip, cos, torch.zeros_like(cos)], 1)], 1)
    grid = torch.nn.functional.affine_grid(theta, [b, 1, size, size], align_corners=False)
    x = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros",
                                        align_corners=False)
    return (x - mean) / std


class _RawCache(Dataset):
    """uint8 1×S×S tensors straight from the cache (the GPU path augments whole batches)."""

    def __init__(self, cache, labels):
        self.cache, self.labels = cache, list(labels)

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, i: int):
        return torch.from_numpy(self.cache[i])[None], float(self.labels[i])


def _loader(dataset: Dataset, args, device: torch.device, collate_fn=None) -> DataLoader:
    return DataLoader(dataset, batch_size=args.batch_size, shuffle=True,
                      num_workers=args.workers, persistent_workers=args.workers > 0,
                      pin_memory=device.type == "cuda", collate_fn=collate_fn)


def run(args) -> list[dict]:
    """Time every pipeline; returns one row per pipeline for the table."""
    from utils.data.cache import build_cache
    from utils.data.dataset import collate
    from utils.runtime import pick_device, seed_everything
    from utils.data.transforms import build_transform

    seed_everything(0)
    device = pick_device("auto")
    manifest = fullres_manifest(shared_data_root())
    repeats = math.ceil(args.epochs_images / len(manifest))
    rows = []
    with tempfile.TemporaryDirectory(prefix="cxr-bench-") as tmp:
        study = study_dataset(manifest, Path(tmp) / "tree", repeats)
        n, sec = time_epoch(_loader(study, args, device), device)
        rows.append({"pipeline": "study: ImageFolder + PIL transforms", "images": n,
                     "seconds": sec, "build": float("nan")})

        start = time.perf_counter()
        cache = build_cache(manifest, SIZE, Path(tmp) / "cache", workers=max(args.workers, 1),
                            progress=False)
        build = time.perf_counter() - start
        tf = build_transform("basic", SIZE, GRAY_MEAN, GRAY_STD)
        cached = cached_dataset(manifest, cache, repeats, tf)
        n, sec = time_epoch(_loader(cached, args, device, collate), device)
        rows.append({"pipeline": "cached: uint8 memmap + albumentations", "images": n,
                     "seconds": sec, "build": build})

        if device.type == "cuda":
            raw = ConcatDataset([_RawCache(cache, manifest["label"])] * repeats)
            n, sec = time_epoch(_loader(raw, args, device), device, on_batch=lambda x: gpu_augment(
                x, SIZE, GRAY_MEAN, GRAY_STD))
            rows.append({"pipeline": "cached: uint8 batches + GPU augment", "images": n,
                         "seconds": sec, "build": build})
    return rows


def transfer_rows(args) -> list[dict]:
    """(b) float32 items vs (d) uint8 items normalised after the transfer, interleaved
    `args.repeats` times in ABBA order; one row per trial."""
    from utils.data.cache import build_cache
    from utils.data.dataset import collate
    from utils.runtime import pick_device, seed_everything
    from utils.data.transforms import build_transform

    seed_everything(0)
    device = pick_device("auto")
    manifest = fullres_manifest(shared_data_root())
    repeats = math.ceil(args.epochs_images / len(manifest))
    with tempfile.TemporaryDirectory(prefix="cxr-bench-") as tmp:
        cache = build_cache(manifest, SIZE, Path(tmp) / "cache", workers=max(args.workers, 1),
                            progress=False)
        tf = build_transform("basic", SIZE, GRAY_MEAN, GRAY_STD)
        contenders = [
            ("float32 items (normalised in the workers)",
             _loader(cached_dataset(manifest, cache, repeats, tf), args, device, collate), None),
            ("uint8 items, normalised after .to(device)",
             _loader(uint8_dataset(manifest, cache, repeats), args, device, collate),
             normalise_after_transfer(GRAY_MEAN, GRAY_STD)),
            ("uint8 items, not normalised (transfer alone)",
             _loader(uint8_dataset(manifest, cache, repeats), args, device, collate), None)]
        rows = []
        for r in range(args.repeats):
            for label, loader, on_batch in (contenders if r % 2 == 0 else contenders[::-1]):
                n, sec = time_epoch(loader, device, on_batch=on_batch)
                rows.append({"pipeline": label, "images": n, "seconds": sec, "rate": n / sec})
    return rows


def _print_transfer(rows: list[dict]) -> float:
    import statistics

    print(f"{'pipeline':<44} {'images':>7} {'images/s (trials)':>30}")
    medians = {}
    for label in dict.fromkeys(r["pipeline"] for r in rows):
        rates = [r["rate"] for r in rows if r["pipeline"] == label]
        medians[label] = statistics.median(rates)
        print(f"{label:<44} {rows[0]['images']:>7} {medians[label]:>9.1f} "
              f"({', '.join(f'{x:.1f}' for x in rates)})")
    float_rate, uint8_rate = list(medians.values())[:2]
    return uint8_rate / float_rate


def ratio_with_build(study_rate: float, cached_rate: float, build_s: float, files: int,
                     epochs: int) -> float:
    """Study time / cached time for `epochs` passes over `files` images, the cached side
    paying its one cache build (`build_s`) on top: what a first run actually sees."""
    study = epochs * files / study_rate
    return study / (build_s + epochs * files / cached_rate)


def _print_ratios(rows: list[dict], files: int) -> float:
    from utils.config import PROFILES

    study, cached = rows[0], rows[1]
    steady = cached["rate"] / study["rate"]
    epochs = int(PROFILES["full"]["epochs"])
    print(f"ratio, steady state (cache already built): {steady:.2f}")
    for n in (1, epochs):
        label = "1 epoch" if n == 1 else f"{n} epochs (the full profile's)"
        print(f"ratio with the {cached['build']:.1f} s cache build counted, {label} over the "
              f"{files} files: {ratio_with_build(study['rate'], cached['rate'], cached['build'], files, n):.2f}")
    return steady


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs-images", type=int, default=500,
                        help="images per timed epoch (the 99 files are repeated)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (both)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--transfer", action="store_true",
                        help="float32 vs uint8 batches from the workers (see the docstring)")
    parser.add_argument("--repeats", type=int, default=3, help="--transfer: trials each")
    args = parser.parse_args(argv)
    if args.transfer:
        ratio = _print_transfer(transfer_rows(args))
        print(f"ratio: {ratio:.2f}")
        return ratio
    rows = run(args)
    print(f"{'pipeline':<40} {'images':>7} {'seconds':>8} {'images/s':>9} {'cache build s':>14}")
    for r in rows:
        r["rate"] = r["images"] / r["seconds"]
        build = "" if math.isnan(r["build"]) else f"{r['build']:.2f}"
        print(f"{r['pipeline']:<40} {r['images']:>7} {r['seconds']:>8.2f} {r['rate']:>9.1f} "
              f"{build:>14}")
    ratio = _print_ratios(rows, len(fullres_manifest(shared_data_root())))
    print(f"ratio: {ratio:.2f}")
    return ratio


if __name__ == "__main__":
    main()
