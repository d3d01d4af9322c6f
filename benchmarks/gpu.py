"""The CUDA path in one command: training speed, input pipeline, utilisation, a real run.

    python -m benchmarks.gpu [--data DIR] [--models all|resnet50,densenet121,...]
                             [--image-size 224] [--batch-size 32] [--steps 30] [--warmup 10]
                             [--workers 4] [--epoch-seconds 30] [--budget 480]
                             [--out reports/gpu_benchmark.json] [--skip-run-all] [--cpu-smoke]

Parts, each printed as it finishes (about 10 minutes on one GPU). A part that fails (out of
memory, "no kernel image is available for execution on the device", an ImportError such as
OpenCV's missing libGL) says so in its own line and the others still run; in part 1 each
(model, mode) row fails on its own.

1. per model (`--models all`: every network the full profile's plan trains, at its image
   size) and mode (fp32; AMP: bf16 where the GPU runs it natively, else fp16 + GradScaler;
   AMP + channels_last, what `fit` does on CUDA): training images/s of `fit`'s own step
   (`utils.training.loop.TrainStep`: fused AdamW, the GradScaler, cuDNN autotuning, the random-init
   BatchNorm clock), inference-mode images/s at the same batch (what validation and test
   cost), peak GPU memory;
2. checks on the first model that trained in fit's mode: host synchronisations per training
   step (CUDA's sync debug mode; 0 is the goal: issue 24.1) and what `deterministic=true`
   costs (cuDNN autotuning off: issue 24.5);
3. the cached input pipeline's images/s with the full profile's workers (shared among the
   ranks as `make_loaders` shares them): the training pipeline (uint8 memmap cache + the
   `strong` albumentations transform, `CXRDataset`: normalised float32 batches), the same
   stopping before the normalisation (uint8 batches, normalised on the GPU: issue 24.8) and
   the torch-only variant (uint8 batches augmented on the GPU), against what the GPU
   consumes from part 1 in fit's mode: below it, training is input-bound (starved);
4. a training epoch of the first model that trained in part 1, from the training pipeline,
   with GPU utilisation sampled every 0.2 s (pynvml, else nvidia-smi, else "unavailable");
5. `run_all.py --data-root DIR --only 03_resnet_ablation_final -p epochs=2 -p seeds=1
   -p pretrained=false` in a scratch folder, and its wall time (skipped, saying so, when
   `--data` is not a folder).

`--data DIR` is a folder of images (JPEG/PNG, Kermany layout for part 4; default
`../shared/data/kermany224`). Without CUDA it says so and exits 0; an NVIDIA GPU that torch
cannot use (driver too old for its CUDA build, no kernels for the GPU) is one message and
exit status 1; `--cpu-smoke` runs every part on the CPU with tiny sizes (a code-path check,
not a figure).

The figures are also written, atomically, as one JSON file (`--out`, default
`reports/gpu_benchmark.json` under the repository; `run_all.py --plan` prices a run from
it). Format (schema 1; a key this list does not name may be added, readers ignore it):

    {"schema": 1, "created": "2026-12-07T14:00:00Z", "command": "python -m benchmarks.gpu ...",
     "device": {"name": "Tesla T4", "capability": "7.5", "count": 2, "torch": "2.14.1+cu130",
                "cuda": "13.0", "amp_dtype": "float16"},
     "models": [{"model": "resnet50", "image_size": 224, "batch_size": 32,
                 "mode": "amp+channels_last", "dtype": "float16",
                 "train_images_per_s": 312.4, "eval_images_per_s": 1010.2,
                 "peak_gb": 3.1, "step_ms": 102.4, "error": null}, ...],
     "pipeline": [{"pipeline": "...", "images_per_s": 850.0, "workers": 4, "batch_size": 32,
                   "starves": ["densenet121"], "error": null}, ...],
     "epoch": {"model": "resnet50", "mode": "amp+channels_last", "loader": "...",
               "images_per_s": 290.1, "seconds": 30.0, "images": 8704,
               "utilisation": "...", "peak_gb": 3.2, "error": null},
     "run_all": {"command": "...", "wall_s": 400.2, "returncode": 0,
                 "train_images_per_s": 250.0, "test_auroc": 0.97, "error": null},
     "checks": {"host_syncs_per_step": 0.0, "cudnn_benchmark": {...}},
     "errors": {"<part>": "one line"}}

One `models` row per (model, image size, mode) measured; `error` is a one-line string when
that row failed (its rates are then null). A plan reads the row whose mode is what `fit`
uses on the device: "amp+channels_last" on CUDA, "fp32" on the CPU. `peak_gb` is null on the
CPU; `device.name` says "CPU smoke" for `--cpu-smoke` (`count` 0). A part that could not run
at all has `null` (or `[]`) and its reason under `errors`; a skipped part has `skipped`.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/gpu.py` works too
    sys.path.insert(0, str(ROOT))

from benchmarks import gpu_parts as parts  # noqa: E402 - after the path fix
from utils.config import PROFILES  # noqa: E402 - stdlib only

FULL = PROFILES["full"]

__all__ = ["main", "run_parts", "NO_CUDA", "ALL_MODELS", "DEFAULT_OUT", "SCHEMA"]

NO_CUDA = "benchmarks.gpu: no CUDA GPU visible"
SCHEMA = 1
DEFAULT_OUT = ROOT / "reports" / "gpu_benchmark.json"
# every network the full profile's plan trains (run_all: 02, 03's variants, 04, 05, 06)
ALL_MODELS = ("resnet50", "densenet121", "efficientnet_b4", "vit", "mixer", "simple_cnn",
              "resnet18_scratch")
RUN_ALL_NEEDS = ("papermill", "nbformat", "nbconvert", "albumentations", "cv2", "pandas",
                 "sklearn", "matplotlib")
GRAY_MEAN, GRAY_STD = 0.449, 0.226


def _part(title: str, key: str, fn: Callable[[], None], report: dict) -> None:
    """Run one part; any failure is printed in its line and kept under `errors`."""
    print(f"\n== {title}", flush=True)
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - one part's failure never stops the others
        message = parts.one_line(exc)
        print(f"failed: {message}", flush=True)
        report.setdefault("errors", {})[key] = message


def _device_record(device: torch.device) -> dict[str, Any]:
    cuda = device.type == "cuda"
    return {"name": torch.cuda.get_device_name(device) if cuda else "CPU smoke (not a measurement)",
            "capability": ".".join(map(str, torch.cuda.get_device_capability(device)))
            if cuda else None,
            "count": torch.cuda.device_count() if cuda else 0,
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "amp_dtype": str(_amp_dtype(device)).split(".")[-1]}


def _amp_dtype(device: torch.device) -> torch.dtype:
    from utils.runtime import amp_dtype  # the project's policy: bf16 where native, else fp16

    return amp_dtype() if device.type == "cuda" else torch.float32


def _header(device: torch.device, report: dict) -> None:
    d = report["device"]
    print(f"device {d['name']} (x{d['count']}), capability {d['capability'] or '-'}, torch "
          f"{d['torch']}, CUDA {d['cuda']}, AMP dtype {d['amp_dtype']}, TF32 conv "
          f"{torch.backends.cudnn.allow_tf32} / matmul {torch.backends.cuda.matmul.allow_tf32}, "
          f"{os.cpu_count()} CPUs", flush=True)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _print_row(r: dict) -> None:
    if r["error"]:
        print(f"{r['model']:<16} {r['mode']:<32} failed: {r['error']}", flush=True)
        return
    print(f"{r['model']:<16} {r['mode']:<32} {r['dtype']:<9} "
          f"{_fmt(r['train_images_per_s'], '>9.1f')} {_fmt(r['step_ms'], '>8.1f')} "
          f"{_fmt(r['eval_images_per_s'], '>10.1f')} {_fmt(r['peak_gb'], '>8.2f')}", flush=True)


def _throughput(args, device, report: dict) -> None:
    print(f"{'model':<16} {'mode':<32} {'dtype':<9} {'train/s':>9} {'step ms':>8} "
          f"{'eval/s':>10} {'peak GB':>8}   ({args.image_size} px, batch {args.batch_size}, "
          f"{args.steps} steps after {args.warmup})")
    rows = report["models"]
    for name in args.models:
        for mode in parts.MODES:
            rows.append(parts.train_rate(name, mode, args.image_size, args.batch_size,
                                         args.steps, args.warmup, device))
            _print_row(rows[-1])
        rate = {r["mode"]: r["train_images_per_s"] for r in rows if r["model"] == name}
        if rate.get("fp32") and rate.get("amp") and rate.get("amp+channels_last"):
            print(f"{name}: AMP {rate['amp'] / rate['fp32']:.2f}x, AMP + channels_last "
                  f"{rate['amp+channels_last'] / rate['fp32']:.2f}x over fp32")


def _checks(args, device, report: dict) -> None:
    """Host syncs per step and what deterministic kernels cost, on the first model that
    trained in fit's mode."""
    mode = parts.fit_mode(device)
    done = [r for r in report["models"] if r["mode"] == mode and not r["error"]]
    if not done:
        print("checks skipped: no model trained in fit's mode")
        return
    name, checks = done[0]["model"], report["checks"]
    step = parts.make_step(name, next(m for m in parts.MODES if m.label == mode),
                           args.image_size, device)
    try:
        images, targets = parts.inputs(args.batch_size, args.image_size, device)
        checks["host_syncs_per_step"] = parts.host_syncs(step, images, targets, device)
        checks["host_syncs_model"] = name
    finally:
        step.close()
    print(f"host syncs per training step (fit's step, {name}, {mode}): "
          f"{checks['host_syncs_per_step']:.1f} (goal 0)")
    row = parts.train_rate(name, parts.DETERMINISTIC, args.image_size, args.batch_size,
                           args.steps, args.warmup, device)
    report["models"].append(row)
    _print_row(row)
    if device.type != "cuda":
        print("cuDNN autotuning: CUDA only (the deterministic row ran for its code path)")
    elif row["error"] is None:
        on, off = done[0]["train_images_per_s"], row["train_images_per_s"]
        ratio = on / off
        checks["cudnn_benchmark"] = {"model": name, "on_images_per_s": on,
                                     "off_images_per_s": off, "speedup": ratio}
        print(f"cuDNN autotuning (deterministic=false, the default): {ratio:.2f}x the "
              f"images/s of deterministic=true for {name}")


def _manifest(files):
    import pandas as pd

    return pd.DataFrame({"path": [p for p, _ in files], "label": [y for _, y in files],
                         "patient_id": [Path(p).stem for p, _ in files], "split": "train",
                         "boxes": [[] for _ in files], "width": 0, "height": 0})


def _loader(args, device, data):
    from torch.utils.data import DataLoader

    from utils.data.dataset import collate

    return DataLoader(data, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                      collate_fn=collate, pin_memory=device.type == "cuda",
                      persistent_workers=args.workers > 0)


def _training_loader(args, device, cache, files):
    """The run's own train pipeline: CXRDataset over the cache + the `strong` transform."""
    from torch.utils.data import ConcatDataset

    from utils.data.dataset import CXRDataset
    from utils.data.transforms import build_transform  # albumentations

    tf = build_transform("strong", args.image_size, GRAY_MEAN, GRAY_STD)
    one = CXRDataset(_manifest(files), ["Pneumonia"], tf, cache)
    return _loader(args, device, ConcatDataset([one] * max(1, -(-args.pipeline_images //
                                                                len(one)))))


def _uint8_loader(args, device, cache, files):
    """The same pipeline stopping before `Normalize`: uint8 batches (a quarter of the bytes
    through shared and pinned memory), normalised on the GPU (issue 24.8)."""
    from benchmarks.input_pipeline import uint8_dataset

    return _loader(args, device, uint8_dataset(
        _manifest(files), cache, max(1, -(-args.pipeline_images // len(files))), "strong",
        args.image_size))


def _normalise_on_device():
    from benchmarks.input_pipeline import normalise_after_transfer

    return normalise_after_transfer(GRAY_MEAN, GRAY_STD)


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


def _pipeline(args, device, state: dict, work: Path, report: dict) -> None:
    files = parts.find_images(args.data, args.pipeline_files) if args.data.is_dir() else []
    if not files:
        print(f"skipped: no JPEG/PNG images under {args.data} (pass --data DIR)")
        report["skipped"]["pipeline"] = f"no images under {args.data}"
        return
    cache, build_s = parts.build_input_cache(files, args.image_size, work / "cache",
                                             max(1, os.cpu_count() or 1))
    print(f"cache: {len(files)} files from {args.data} at {args.image_size} px in {build_s:.1f} s "
          f"({len(files) / build_s:.0f} images/s, {os.cpu_count()} processes); pipelines with "
          f"{args.workers} workers, batch {args.batch_size}:")
    mode = parts.fit_mode(device)
    consumes = {r["model"]: r["train_images_per_s"] for r in report["models"]
                if r["mode"] == mode and not r["error"]}
    for label, make, on_batch in (
            ("cache + albumentations strong (training)", _training_loader, None),
            ("same, uint8 batches normalised on the GPU", _uint8_loader, _normalise_on_device()),
            ("cache uint8 + GPU augment (torch only)", _raw_loader,
             _gpu_augment(args.image_size))):
        row = {"pipeline": label, "images_per_s": None, "workers": args.workers,
               "batch_size": args.batch_size, "starves": [], "error": None}
        report["pipeline"].append(row)
        try:
            loader = make(args, device, cache, files)
            row["images_per_s"] = parts.loader_rate(loader, device, args.pipeline_images, on_batch)
        except Exception as exc:  # noqa: BLE001 - the other pipeline still runs
            row["error"] = parts.one_line(exc)
            print(f"  {label:<42} failed: {row['error']}", flush=True)
            continue
        state.setdefault("loaders", {})[label] = (loader, on_batch)
        row["starves"] = [m for m, gpu in consumes.items() if row["images_per_s"] < gpu]
        verdict = ", ".join(f"{'STARVES' if row['images_per_s'] < gpu else 'feeds'} {m} "
                            f"({gpu:.0f}/s)" for m, gpu in consumes.items())
        print(f"  {label:<42} {row['images_per_s']:>8.1f} images/s   {verdict}", flush=True)


def _fixed_batches(args, device):
    """Stand-in loader when no pipeline could be built: one fixed batch, on the device."""
    images = torch.randn(args.batch_size, 1, args.image_size, args.image_size, device=device)
    return [(images, torch.ones(args.batch_size, 1, device=device))] * 8


def _epoch(args, device, state: dict, report: dict) -> None:
    loaders = state.get("loaders") or {
        "fixed on-device batches (no input pipeline: see part 3)":
            (_fixed_batches(args, device), None)}
    label, (loader, on_batch) = next(iter(loaders.items()))
    trained = [r["model"] for r in report["models"]
               if r["mode"] == parts.fit_mode(device) and not r["error"]]
    name = (trained or args.models)[0]  # the first model that trained in part 1
    report["epoch"] = {"model": name, "loader": label, "error": None}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    r = parts.train_from_loader(name, loader, args.image_size, device, args.epoch_seconds,
                                on_batch)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    report["epoch"].update(r, peak_gb=peak)
    print(f"{name} {r['mode']} from '{label}': {r['images_per_s']:.1f} images/s over "
          f"{r['seconds']:.1f} s ({r['images']} images); {r['utilisation']}; peak GPU memory "
          f"{_fmt(peak, '.2f')} GB")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken package, or a finder that refuses it
        return False


def _real_run(args, work: Path, deadline: float, report: dict) -> None:
    why = ("--skip-run-all" if args.skip_run_all else "--cpu-smoke" if args.cpu_smoke else
           f"--data {args.data} is not a folder of images" if not args.data.is_dir() else None)
    missing = [] if why else [m for m in RUN_ALL_NEEDS if not _importable(m)]
    if missing:
        why = f"run_all.py needs the missing module(s) {missing}"
    if why:
        print(f"skipped: {why}")
        report["skipped"]["run_all"] = why
        return
    cmd = [sys.executable, str(ROOT / "run_all.py"), "--data-root", str(args.data),
           "--only", "03_resnet_ablation_final", "-p", "epochs=2", "-p", "seeds=1",
           "-p", "pretrained=false", "--force", "--reports-dir", str(work / "reports"),
           "--checkpoint-dir", str(work / "checkpoints")]
    env = {**os.environ, "CXR_CACHE_DIR": str(work / "run_cache")}
    timeout = max(30.0, deadline - time.monotonic())
    report["run_all"] = {"command": shlex.join(cmd), "wall_s": None, "returncode": None,
                         "error": None}
    print("$ " + " ".join(cmd), flush=True)
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        report["run_all"]["error"] = f"stopped after {timeout:.0f} s (--budget)"
        print(f"stopped after {timeout:.0f} s (--budget): no wall time")
        return
    wall = time.perf_counter() - start
    report["run_all"].update(wall_s=wall, returncode=done.returncode)
    results = work / "reports" / "results" / "03_resnet_ablation_final.json"
    extra = ""
    if results.is_file():
        res = json.loads(results.read_text())
        rate = res.get("timing", {}).get("train_images_per_second")
        auroc = res.get("test", {}).get("auroc")
        report["run_all"].update(train_images_per_s=rate, test_auroc=auroc)
        extra = f"; train {_fmt(rate, '.1f')} images/s, test AUROC {_fmt(auroc, '.3f')}"
    print(f"wall {wall:.1f} s, exit status {done.returncode}{extra}")
    if done.returncode:
        tail = (done.stdout + done.stderr).strip().splitlines()[-15:]
        report["run_all"]["error"] = tail[-1] if tail else f"exit status {done.returncode}"
        print("\n".join(tail))


def new_report(device: torch.device, command: str) -> dict[str, Any]:
    """The JSON file's skeleton (schema above), before any part ran."""
    return {"schema": SCHEMA,
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "command": command, "device": _device_record(device), "models": [],
            "pipeline": [], "epoch": None, "run_all": None, "checks": {}, "skipped": {}}


def run_parts(args, device: torch.device, report: dict) -> dict:
    """Every part in order, within `args.budget` seconds for the real run's timeout; each
    part fills its key of `report`, a failure its `errors` entry."""
    deadline = time.monotonic() + args.budget
    state: dict = {}
    _header(device, report)
    with tempfile.TemporaryDirectory(prefix="cxr-gpu-bench-") as tmp:
        work = Path(tmp)
        if args.cpu_smoke and not args.data.is_dir():
            args.data = _smoke_data(work / "data")
        _part("1. training and inference images/s (fit's step, fixed on-device inputs)",
              "models", lambda: _throughput(args, device, report), report)
        _part("2. checks: host syncs per training step, cuDNN autotuning", "checks",
              lambda: _checks(args, device, report), report)
        _part("3. cached input pipeline vs what the GPU consumes", "pipeline",
              lambda: _pipeline(args, device, state, work, report), report)
        _part("4. a training epoch from the input pipeline, GPU utilisation", "epoch",
              lambda: _epoch(args, device, state, report), report)
        state.pop("loaders", None)  # stop their workers before the real run
        _part("5. real data: run_all.py 03_resnet_ablation_final, 2 epochs, 1 seed",
              "run_all", lambda: _real_run(args, work, deadline, report), report)
    return report


def _smoke_data(folder: Path, n: int = 8) -> Path:
    """A few tiny PNGs in a Kermany-like layout, for --cpu-smoke without --data."""
    from PIL import Image

    for i in range(n):
        out = folder / ("PNEUMONIA" if i % 2 else "NORMAL") / f"img{i}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (48, 40), color=30 * i).save(out)
    return folder


def _write(report: dict, out: Path) -> None:
    from utils.fileio import atomic_write_json

    atomic_write_json(out, report)
    print(f"figures written to {out}")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "kermany224")
    p.add_argument("--models", default="all",
                   help=f"comma-separated registry names, or all: {','.join(ALL_MODELS)}")
    p.add_argument("--image-size", type=int, default=FULL["image_size"],
                   help="default: the full profile's")
    p.add_argument("--batch-size", type=int, default=FULL["batch_size"],
                   help="default: the full profile's")
    p.add_argument("--steps", type=int, default=30, help="timed steps per model and mode")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--workers", type=int, default=FULL["num_workers"],
                   help="loader workers (default: the full profile's, shared as make_loaders "
                   "shares the CPUs)")
    p.add_argument("--pipeline-files", type=int, default=512, help="files cached for part 2")
    p.add_argument("--pipeline-images", type=int, default=4096, help="images per timed pass")
    p.add_argument("--epoch-seconds", type=float, default=30.0)
    p.add_argument("--budget", type=float, default=480.0, help="seconds for all parts")
    p.add_argument("--out", type=Path, default=None,
                   help="the JSON file of the figures (default: reports/gpu_benchmark.json; "
                   "with --cpu-smoke a file in the temporary folder)")
    p.add_argument("--skip-run-all", action="store_true")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="without CUDA: every part on the CPU, tiny sizes, not a measurement")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from utils.runtime import cuda_problem, loader_workers

    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(argv)
    args.models = list(ALL_MODELS) if args.models == "all" else \
        [m for m in args.models.split(",") if m]
    args.workers = loader_workers(args.workers)  # as make_loaders does
    if not args.cpu_smoke and (problem := cuda_problem()):
        print(f"benchmarks.gpu: {problem}")
        return 1
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
    out = args.out or (Path(tempfile.gettempdir()) / "cxr_gpu_benchmark_smoke.json"
                       if args.cpu_smoke else DEFAULT_OUT)
    out = out if out.is_absolute() else ROOT / out
    report = new_report(device, "python -m benchmarks.gpu " + shlex.join(argv))
    start = time.perf_counter()
    try:
        run_parts(args, device, report)
    finally:  # what was measured is kept even when the run is interrupted
        report["seconds"] = time.perf_counter() - start
        _write(report, out)
    print(f"\nbenchmarks.gpu: done in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
