"""The CUDA path in one command: training speed, input pipeline, utilisation, a real run.

    python -m benchmarks.gpu [--data DIR] [--models resnet50,densenet121] [--image-size 224]
                             [--batch-size 32] [--steps 30] [--warmup 10] [--workers 4]
                             [--epoch-seconds 30] [--budget 480] [--skip-run-all] [--cpu-smoke]

Parts, each printed as it finishes (about 8 minutes on one GPU):

1. train images/s of each model at 224 px on fixed on-device inputs, in fp32, AMP (bf16
   where the GPU runs it natively, else fp16 + GradScaler: the project's policy) and AMP +
   channels_last, with the peak GPU memory each allocated;
2. the cached input pipeline's images/s with the full profile's workers: the training
   pipeline (uint8 memmap cache + the `strong` albumentations transform, `CXRDataset`) and
   the torch-only variant (uint8 batches augmented on the GPU), against what the GPU
   consumes from part 1: below it, training is input-bound (starved);
3. a training epoch of the first model from the training pipeline, with GPU utilisation
   sampled every 0.2 s (pynvml, else nvidia-smi, else "unavailable");
4. `run_all.py --data-root DIR --only 03_resnet_ablation_final -p epochs=2
   -p pretrained=false` in a scratch folder, and its wall time.

`--data DIR` is a folder of images (JPEG/PNG, Kermany layout for part 4; default
`../shared/data/kermany224`). Parts 1 and 3 need only torch, torchvision and timm (part 3
trains from fixed on-device batches when part 2 could build no pipeline); a part whose
package is missing (cv2/PIL/pandas for the cache, albumentations, papermill) is reported as
skipped with the module's name. Without CUDA it says so and exits 0;
`--cpu-smoke` runs every part on the CPU with tiny sizes (a code-path check, not a figure).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/gpu.py` works too
    sys.path.insert(0, str(ROOT))

from benchmarks import gpu_parts as parts  # noqa: E402 - after the path fix
from utils.config import PROFILES  # noqa: E402 - stdlib only

FULL = PROFILES["full"]

__all__ = ["main", "run_parts", "NO_CUDA"]

NO_CUDA = "benchmarks.gpu: no CUDA GPU visible"
RUN_ALL_NEEDS = ("papermill", "nbformat", "nbconvert", "albumentations", "cv2", "pandas",
                 "sklearn", "matplotlib")
GRAY_MEAN, GRAY_STD = 0.449, 0.226


def _part(title: str, fn: Callable[[], None]) -> None:
    """Run one part; a missing package skips it, naming the package."""
    print(f"\n== {title}", flush=True)
    try:
        fn()
    except ModuleNotFoundError as exc:
        print(f"skipped: needs the missing module {exc.name!r} ({exc})")


def _header(device: torch.device) -> None:
    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else "CPU (smoke run, not a measurement)"
    cap = ".".join(map(str, torch.cuda.get_device_capability(device))) if cuda else "-"
    print(f"device {name}, capability {cap}, torch {torch.__version__}, CUDA "
          f"{torch.version.cuda}, AMP dtype {str(parts.amp_dtype(device)).split('.')[-1]}, "
          f"cudnn.benchmark {torch.backends.cudnn.benchmark}, TF32 conv "
          f"{torch.backends.cudnn.allow_tf32} / matmul {torch.backends.cuda.matmul.allow_tf32}, "
          f"{os.cpu_count()} CPUs", flush=True)


def _throughput(args, device, state: dict) -> None:
    print(f"{'model':<12} {'mode':<18} {'dtype':<9} {'images/s':>9} {'step ms':>8} "
          f"{'peak GB':>8}   ({args.image_size} px, batch {args.batch_size}, "
          f"{args.steps} steps after {args.warmup})")
    for name in args.models:
        for mode in parts.MODES:
            r = parts.train_rate(name, mode, args.image_size, args.batch_size, args.steps,
                                 args.warmup, device)
            state.setdefault("consumes", {})[(name, r["mode"])] = r["images_per_s"]
            print(f"{r['model']:<12} {r['mode']:<18} {r['dtype']:<9} {r['images_per_s']:>9.1f} "
                  f"{r['step_ms']:>8.1f} {r['peak_gb']:>8.2f}", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        fp32 = state["consumes"][(name, "fp32")]
        print(f"{name}: AMP {state['consumes'][(name, 'amp')] / fp32:.2f}x, AMP + "
              f"channels_last {state['consumes'][(name, 'amp+channels_last')] / fp32:.2f}x "
              f"over fp32")


def _training_loader(args, device, cache, files):
    """The run's own train pipeline: CXRDataset over the cache + the `strong` transform."""
    import pandas as pd
    from torch.utils.data import ConcatDataset, DataLoader

    from utils.data.dataset import CXRDataset, collate
    from utils.transforms import build_transform  # albumentations

    manifest = pd.DataFrame({"path": [p for p, _ in files], "label": [y for _, y in files],
                             "patient_id": [Path(p).stem for p, _ in files], "split": "train",
                             "boxes": [[] for _ in files], "width": 0, "height": 0})
    tf = build_transform("strong", args.image_size, GRAY_MEAN, GRAY_STD)
    one = CXRDataset(manifest, ["Pneumonia"], tf, cache)
    data = ConcatDataset([one] * max(1, -(-args.pipeline_images // len(one))))
    return DataLoader(data, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                      collate_fn=collate, pin_memory=device.type == "cuda",
                      persistent_workers=args.workers > 0)


def _raw_loader(args, device, cache, files):
    """uint8 rows straight from the cache (torch only); augmented on the device."""
    from torch.utils.data import ConcatDataset, DataLoader

    from benchmarks.input_pipeline import _RawCache

    data = ConcatDataset([_RawCache(cache, [y for _, y in files])] *
                         max(1, -(-args.pipeline_images // len(files))))
    return DataLoader(data, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                      pin_memory=device.type == "cuda", persistent_workers=args.workers > 0)


def _gpu_augment(size: int):
    from benchmarks.input_pipeline import gpu_augment

    return lambda x: gpu_augment(x, size, GRAY_MEAN, GRAY_STD)


def _pipeline(args, device, state: dict, work: Path) -> None:
    files = parts.find_images(args.data, args.pipeline_files) if args.data.is_dir() else []
    if not files:
        print(f"skipped: no JPEG/PNG images under {args.data} (pass --data DIR)")
        return
    cache, build_s = parts.build_input_cache(files, args.image_size, work / "cache",
                                             max(1, os.cpu_count() or 1))
    print(f"cache: {len(files)} files from {args.data} at {args.image_size} px in {build_s:.1f} s "
          f"({len(files) / build_s:.0f} images/s, {os.cpu_count()} processes); pipelines with "
          f"{args.workers} workers, batch {args.batch_size}:")
    consumes = {k: v for k, v in state.get("consumes", {}).items() if k[1] == "amp+channels_last"}
    for label, make, on_batch in (
            ("cache + albumentations strong (training)", _training_loader, None),
            ("cache uint8 + GPU augment (torch only)", _raw_loader, _gpu_augment(args.image_size))):
        try:
            loader = make(args, device, cache, files)
        except ModuleNotFoundError as exc:
            print(f"  {label:<42} skipped: needs the missing module {exc.name!r}")
            continue
        rate = parts.loader_rate(loader, device, args.pipeline_images, on_batch)
        state.setdefault("loaders", {})[label] = (loader, on_batch)
        verdict = ", ".join(f"{'STARVES' if rate < gpu else 'feeds'} {m} ({gpu:.0f}/s)"
                            for (m, _), gpu in consumes.items())
        print(f"  {label:<42} {rate:>8.1f} images/s   {verdict}", flush=True)


def _fixed_batches(args, device):
    """Stand-in loader when no pipeline could be built: one fixed batch, on the device."""
    images = torch.randn(args.batch_size, 1, args.image_size, args.image_size, device=device)
    return [(images, torch.ones(args.batch_size, 1, device=device))] * 8


def _epoch(args, device, state: dict) -> None:
    loaders = state.get("loaders") or {
        "fixed on-device batches (no input pipeline: see part 2)":
            (_fixed_batches(args, device), None)}
    label, (loader, on_batch) = next(iter(loaders.items()))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    r = parts.train_from_loader(args.models[0], loader, args.image_size, device,
                                args.epoch_seconds, on_batch)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    print(f"{args.models[0]} AMP + channels_last from '{label}': {r['images_per_s']:.1f} "
          f"images/s over {r['seconds']:.1f} s ({r['images']} images); {r['utilisation']}; "
          f"peak GPU memory {peak:.2f} GB")


def _real_run(args, work: Path, deadline: float) -> None:
    if args.skip_run_all or args.cpu_smoke:
        print("skipped: --skip-run-all" if args.skip_run_all else "skipped with --cpu-smoke")
        return
    missing = [m for m in RUN_ALL_NEEDS if importlib.util.find_spec(m) is None]
    if missing:
        print(f"skipped: run_all.py needs the missing module(s) {missing}")
        return
    cmd = [sys.executable, str(ROOT / "run_all.py"), "--data-root", str(args.data),
           "--only", "03_resnet_ablation_final", "-p", "epochs=2", "-p", "pretrained=false",
           "--force", "--reports-dir", str(work / "reports"),
           "--checkpoint-dir", str(work / "checkpoints")]
    env = {**os.environ, "CXR_CACHE_DIR": str(work / "run_cache")}
    timeout = max(30.0, deadline - time.monotonic())
    print("$ " + " ".join(cmd), flush=True)
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"stopped after {timeout:.0f} s (--budget): no wall time")
        return
    wall = time.perf_counter() - start
    results = work / "reports" / "results" / "03_resnet_ablation_final.json"
    extra = ""
    if results.is_file():
        res = json.loads(results.read_text())
        extra = (f"; train {res.get('timing', {}).get('train_images_per_second', float('nan')):.1f}"
                 f" images/s, test AUROC {res.get('test', {}).get('auroc', float('nan')):.3f}")
    print(f"wall {wall:.1f} s, exit status {done.returncode}{extra}")
    if done.returncode:
        print("\n".join((done.stdout + done.stderr).strip().splitlines()[-15:]))


def run_parts(args, device: torch.device) -> None:
    """Every part in order, within `args.budget` seconds for the real run's timeout."""
    deadline = time.monotonic() + args.budget
    state: dict = {}
    _header(device)
    with tempfile.TemporaryDirectory(prefix="cxr-gpu-bench-") as tmp:
        work = Path(tmp)
        if args.cpu_smoke and not args.data.is_dir():
            args.data = _smoke_data(work / "data")
        _part("1. training images/s (fixed on-device inputs)",
              lambda: _throughput(args, device, state))
        _part("2. cached input pipeline vs what the GPU consumes",
              lambda: _pipeline(args, device, state, work))
        _part("3. a training epoch from the input pipeline, GPU utilisation",
              lambda: _epoch(args, device, state))
        state.pop("loaders", None)  # stop their workers before the real run
        _part("4. real data: run_all.py 03_resnet_ablation_final, 2 epochs",
              lambda: _real_run(args, work, deadline))


def _smoke_data(folder: Path, n: int = 8) -> Path:
    """A few tiny PNGs in a Kermany-like layout, for --cpu-smoke without --data."""
    from PIL import Image

    for i in range(n):
        out = folder / ("PNEUMONIA" if i % 2 else "NORMAL") / f"img{i}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (48, 40), color=30 * i).save(out)
    return folder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "kermany224")
    p.add_argument("--models", default="resnet50,densenet121")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=FULL["batch_size"],
                   help="default: the full profile's")
    p.add_argument("--steps", type=int, default=30, help="timed steps per model and mode")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--workers", type=int, default=FULL["num_workers"],
                   help="loader workers (default: the full profile's, at most the CPUs)")
    p.add_argument("--pipeline-files", type=int, default=512, help="files cached for part 2")
    p.add_argument("--pipeline-images", type=int, default=4096, help="images per timed pass")
    p.add_argument("--epoch-seconds", type=float, default=30.0)
    p.add_argument("--budget", type=float, default=480.0, help="seconds for all parts")
    p.add_argument("--skip-run-all", action="store_true")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="without CUDA: every part on the CPU, tiny sizes, not a measurement")
    args = p.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.workers = min(args.workers, os.cpu_count() or 1)  # as make_loaders does
    if not torch.cuda.is_available() and not args.cpu_smoke:
        print(f"{NO_CUDA} (torch {torch.__version__}, CUDA build {torch.version.cuda}): nothing "
              f"measured. Run it on a GPU machine; --cpu-smoke checks its code paths here.")
        return 0
    if args.cpu_smoke:
        args.image_size, args.batch_size, args.steps, args.warmup = 32, 2, 1, 1
        args.workers, args.pipeline_files, args.pipeline_images = 0, 8, 8
        args.epoch_seconds = min(args.epoch_seconds, 1.0)
        torch.set_num_threads(1)  # tiny tensors: a second thread only adds barrier waits
    device = torch.device("cuda" if not args.cpu_smoke else "cpu")
    start = time.perf_counter()
    run_parts(args, device)
    print(f"\nbenchmarks.gpu: done in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
