"""The measurements behind `python -m benchmarks.gpu`, one function per part.

Only torch (and torchvision/timm through the model registry) are imported here at module
level: the GPU machine may have nothing else. Parts that need more (the cache needs cv2,
PIL and pandas; the training transform albumentations) import it when they run, and the
caller reports the error in that part's line.

Every training step timed here is `fit`'s own (`utils.training.loop.TrainStep`: fused AdamW, the
GradScaler and autocast policy, channels_last, cuDNN autotuning, the BatchNorm clock), not a
look-alike.
"""
from __future__ import annotations

import gc
import shutil
import statistics
import subprocess
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["Mode", "MODES", "DETERMINISTIC", "fit_mode", "one_line", "make_step", "inputs",
           "train_rate",
           "host_syncs", "SyncCounter", "GpuSampler", "find_images", "build_input_cache",
           "loader_rate", "train_from_loader"]


@dataclass(frozen=True)
class Mode:
    """A precision/layout setting of `fit` (the RunConfig fields it sets)."""

    label: str
    amp: bool
    channels_last: bool
    deterministic: bool = False


MODES = (Mode("fp32", False, False), Mode("amp", True, False),
         Mode("amp+channels_last", True, True))
# fit's CUDA mode with RunConfig.deterministic: cuDNN autotuning off (what it costs)
DETERMINISTIC = Mode("amp+channels_last+deterministic", True, True, deterministic=True)


def fit_mode(device: torch.device) -> str:
    """The row a run plan prices: the mode `fit` trains in on this device."""
    return "amp+channels_last" if device.type == "cuda" else "fp32"


def one_line(exc: BaseException) -> str:
    """An error as one line: its type and the first line of its message."""
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        return f"needs the missing module {exc.name!r}"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(name: str, mode: Mode, image_size: int, device: torch.device):
    """`fit`'s training step for a registry model built from random init (as run_all's
    from-scratch steps, and so with the cumulative BatchNorm average) in `mode`."""
    from utils.config import make_config
    from utils.models.registry import create_model  # torch, torchvision, timm only
    from utils.training.loop import TrainStep

    cfg = make_config({"model": name, "image_size": image_size, "pretrained": False,
                       "amp": mode.amp, "channels_last": mode.channels_last,
                       "deterministic": mode.deterministic, "lr": 1e-4,
                       "device": device.type}, profile="full")
    torch.manual_seed(0)
    model = create_model(name, 1, pretrained=False, image_size=image_size)
    return TrainStep(model, cfg, nn.BCEWithLogitsLoss(), device)


def inputs(batch_size: int, image_size: int, device: torch.device):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, 1, image_size, image_size, generator=g).to(device)
    targets = (torch.rand(batch_size, 1, generator=g) < 0.5).float().to(device)
    return images, targets


def _timed(fn, steps: int, device: torch.device) -> float:
    """Seconds for `steps` calls of `fn`, the device's queue drained before and after."""
    _sync(device)
    start = time.perf_counter()
    out = None
    for _ in range(steps):
        out = fn()
    if out is not None:
        out.float().sum().item()  # one host sync at the end, as fit's epoch mean
    _sync(device)
    return time.perf_counter() - start


def train_rate(name: str, mode: Mode, image_size: int, batch_size: int, steps: int,
               warmup: int, device: torch.device) -> dict:
    """One `models` row: training images/s of `fit`'s step and inference-mode images/s
    (validation's and test's forward) at the same batch, on fixed on-device inputs (no
    loader: what the GPU itself consumes), and the peak memory allocated. A failure (out
    of memory, no kernel for this GPU, a missing package) is the row's `error`."""
    row = {"model": name, "image_size": image_size, "batch_size": batch_size,
           "mode": mode.label, "dtype": None, "train_images_per_s": None,
           "eval_images_per_s": None, "step_ms": None, "peak_gb": None, "error": None}
    step = None
    try:
        step = make_step(name, mode, image_size, device)
        row["dtype"] = str(step.dtype).split(".")[-1]
        images, targets = inputs(batch_size, image_size, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(warmup):  # cuDNN autotuning, allocator, lazy modules
            step(images, targets)
        seconds = _timed(lambda: step(images, targets), steps, device)
        for _ in range(min(warmup, 3)):
            step.infer(images)
        eval_seconds = _timed(lambda: step.infer(images), steps, device)
        row.update(train_images_per_s=steps * batch_size / seconds,
                   step_ms=1000 * seconds / steps,
                   eval_images_per_s=steps * batch_size / eval_seconds,
                   peak_gb=(torch.cuda.max_memory_allocated(device) / 2**30
                            if device.type == "cuda" else None))
    except Exception as exc:  # noqa: BLE001 - the row reports it; the other rows still run
        row["error"] = one_line(exc)
    finally:
        if step is not None:
            step.close()
        del step
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


_SYNCING = {torch.Tensor.item, torch.Tensor.__float__, torch.Tensor.__int__,
            torch.Tensor.__bool__, torch.Tensor.__index__, torch.Tensor.tolist,
            torch.Tensor.numpy, torch.Tensor.cpu}


class SyncCounter(TorchFunctionMode):
    """Counts the calls that would make the host wait for the device (`.item()`,
    `float()`, `bool()`, `.tolist()`, `.cpu()`...), on any device: what
    `torch.cuda.set_sync_debug_mode` reports on a GPU, checkable on a CPU."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _SYNCING:
            self.calls.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


def host_syncs(step, images: torch.Tensor, targets: torch.Tensor, device: torch.device,
               steps: int = 3) -> float:
    """Host synchronisations per training step of `step`, after one warm-up step: CUDA's
    sync debug mode on a GPU (each synchronising call warns), the torch-function counter
    elsewhere."""
    step(images, targets)
    _sync(device)
    if device.type != "cuda":
        with SyncCounter() as counter:
            for _ in range(steps):
                step(images, targets)
        return len(counter.calls) / steps
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                step(images, targets)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught) / steps


class GpuSampler:
    """GPU utilisation (%) sampled in a thread: `torch.cuda.utilization` (pynvml) when it
    works, else `nvidia-smi`, else `source` says why none is available."""

    def __init__(self, device: torch.device, interval: float = 0.2):
        self.device, self.interval, self.samples = device, interval, []
        self.source = self._pick()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _pick(self) -> str:
        if self.device.type != "cuda":
            return "unavailable (no GPU)"
        try:
            torch.cuda.utilization(self.device)
            return "pynvml"
        except Exception:  # noqa: BLE001 - pynvml missing or the driver refused
            pass
        if shutil.which("nvidia-smi") and self._smi() is not None:
            return "nvidia-smi"
        return "unavailable (no pynvml, no working nvidia-smi)"

    def _smi(self) -> float | None:
        uuid = getattr(torch.cuda.get_device_properties(self.device), "uuid", None)
        target = f"GPU-{uuid}" if uuid else str(self.device.index or 0)
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu",
                                  "--format=csv,noheader,nounits", "-i", target],
                                 capture_output=True, text=True, timeout=5)
            return float(out.stdout.strip().splitlines()[0])
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            return None

    def _read(self) -> float | None:
        if self.source == "pynvml":
            return float(torch.cuda.utilization(self.device))
        return self._smi() if self.source == "nvidia-smi" else None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            value = self._read()
            if value is not None:
                self.samples.append(value)

    def summary(self) -> str:
        if not self.samples:
            return f"utilisation {self.source}"
        s = self.samples
        return (f"utilisation ({self.source}, {len(s)} samples): mean {statistics.mean(s):.0f} %, "
                f"median {statistics.median(s):.0f} %, min {min(s):.0f} %")

    def __enter__(self) -> "GpuSampler":
        if self.source in ("pynvml", "nvidia-smi"):
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def find_images(folder: Path, limit: int) -> list[tuple[str, int]]:
    """Up to `limit` (path, label) pairs under `folder`: label 1 below a `PNEUMONIA` folder."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    step = max(1, len(files) // limit) if limit else 1  # spread over the classes' folders
    return [(str(p), int("PNEUMONIA" in p.parts)) for p in files[::step][:limit or None]]


def build_input_cache(files: list[tuple[str, int]], image_size: int, folder: Path, workers: int):
    """The project's uint8 cache of these files (needs cv2, PIL, pandas); (cache, seconds)."""
    from utils.data.cache import build_cache

    start = time.perf_counter()
    cache = build_cache([p for p, _ in files], image_size, folder, workers=workers,
                        progress=False)
    return cache, time.perf_counter() - start


def loader_rate(loader: Iterable, device: torch.device, min_images: int,
                on_batch=None) -> float:
    """Images/s the loader delivers to the device (batches moved there, optionally
    augmented there), over at least `min_images`, after two warm-up batches."""
    it = iter(loader)
    for _ in range(2):
        next(it)
    n, start = 0, time.perf_counter()
    while n < min_images:
        for batch in loader:
            images = batch[0].to(device, non_blocking=True)
            images = on_batch(images) if on_batch else images
            n += images.shape[0]
            if n >= min_images:
                break
    _sync(device)
    return n / (time.perf_counter() - start)


def train_from_loader(name: str, loader: Iterable, image_size: int, device: torch.device,
                      seconds: float, on_batch=None) -> dict:
    """Train `name` with fit's step in fit's mode on this device from a real loader for
    about `seconds`, sampling GPU utilisation: the end-to-end images/s of a training epoch."""
    mode = next(m for m in MODES if m.label == fit_mode(device))
    step = make_step(name, mode, image_size, device)
    n, start = 0, None
    try:
        with GpuSampler(device) as sampler:
            while start is None or time.perf_counter() - start < seconds:
                for images, targets, *_ in loader:
                    images = images.to(device, non_blocking=True)
                    images = on_batch(images) if on_batch else images
                    step(images, targets.float().reshape(len(images), -1))
                    if start is None:  # the first batch pays cuDNN set-up and worker start
                        _sync(device)
                        start = time.perf_counter()
                        continue
                    n += len(images)
                    if time.perf_counter() - start >= seconds:
                        break
            _sync(device)
            elapsed = time.perf_counter() - start
    finally:
        step.close()
    return {"mode": mode.label, "images_per_s": n / elapsed, "images": n, "seconds": elapsed,
            "utilisation": sampler.summary()}
