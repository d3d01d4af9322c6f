"""The measurements behind `python -m benchmarks.gpu`, one function per part.

Only torch (and torchvision/timm through the model registry) are imported here at module
level: the GPU machine may have nothing else. Parts that need more (the cache needs cv2,
PIL and pandas; the training transform albumentations) import it when they run, and the
caller reports a `ModuleNotFoundError` as "skipped" with the module's name.
"""
from __future__ import annotations

import contextlib
import shutil
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

__all__ = ["MODES", "amp_dtype", "train_rate", "GpuSampler", "find_images", "build_input_cache",
           "loader_rate", "train_from_loader"]

# (label, mixed precision, channels_last)
MODES = (("fp32", False, False), ("amp", True, False), ("amp+channels_last", True, True))


def amp_dtype(device: torch.device) -> torch.dtype:
    """The project's policy (`utils.runtime.amp_dtype`: bf16 where native, else fp16 with a
    GradScaler); bf16 on the CPU, where autocast has no fp16 scaler to pair with."""
    from utils.runtime import amp_dtype as policy  # numpy + torch only

    return policy() if device.type == "cuda" else torch.bfloat16


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Step:
    """One optimiser step as `utils.train.fit` takes it (autocast, fp32 loss, GradScaler)."""

    def __init__(self, model: nn.Module, device: torch.device, amp: bool, channels_last: bool):
        self.model, self.device, self.channels_last = model, device, channels_last
        self.dtype = amp_dtype(device) if amp else None
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        self.loss_fn = nn.BCEWithLogitsLoss()

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        autocast = torch.autocast(self.device.type, dtype=self.dtype) if self.dtype \
            else contextlib.nullcontext()
        with autocast:
            loss = self.loss_fn(self.model(images).float(), targets)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        return loss.detach()


def _model(name: str, image_size: int, device: torch.device, channels_last: bool) -> nn.Module:
    from utils.models import create_model  # torch, torchvision, timm only

    torch.manual_seed(0)
    model = create_model(name, 1, pretrained=False, image_size=image_size).to(device).train()
    return model.to(memory_format=torch.channels_last) if channels_last else model


def train_rate(name: str, mode: tuple[str, bool, bool], image_size: int, batch_size: int,
               steps: int, warmup: int, device: torch.device) -> dict:
    """Training images/s of one model in one precision mode, on fixed on-device inputs
    (no loader: what the GPU itself consumes), and the peak memory it allocated."""
    label, amp, channels_last = mode
    model = _model(name, image_size, device, channels_last)
    step = _Step(model, device, amp, channels_last)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, 1, image_size, image_size, generator=g).to(device)
    targets = (torch.rand(batch_size, 1, generator=g) < 0.5).float().to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        step(images, targets)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        loss = step(images, targets)
    loss.item()
    _sync(device)
    seconds = time.perf_counter() - start
    cuda = device.type == "cuda"
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else float("nan")
    return {"model": name, "mode": label, "dtype": str(step.dtype or torch.float32).split(".")[-1],
            "images_per_s": steps * batch_size / seconds, "step_ms": 1000 * seconds / steps,
            "peak_gb": peak}


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
    """Train `name` (AMP + channels_last, fit's default) from a real loader for about
    `seconds`, sampling GPU utilisation: the end-to-end images/s of a training epoch."""
    model = _model(name, image_size, device, channels_last=True)
    step = _Step(model, device, amp=True, channels_last=True)
    n, start = 0, None
    with GpuSampler(device) as sampler:
        while start is None or time.perf_counter() - start < seconds:
            for images, targets, *_ in loader:
                images = images.to(device, non_blocking=True)
                images = on_batch(images) if on_batch else images
                step(images, targets.float().reshape(len(images), -1).to(device))
                if start is None:  # the first batch pays cuDNN set-up and worker start
                    _sync(device)
                    start = time.perf_counter()
                    continue
                n += len(images)
                if time.perf_counter() - start >= seconds:
                    break
        _sync(device)
        elapsed = time.perf_counter() - start
    return {"images_per_s": n / elapsed, "images": n, "seconds": elapsed,
            "utilisation": sampler.summary()}
