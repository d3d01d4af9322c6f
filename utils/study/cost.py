"""What a run costs before it starts: hours on a named GPU, disk.

`python run_all.py --plan --gpu t4` prices every step of the plan from two things:

- **the runs** (`utils.study.run_sizes`): what each notebook trains, with the images each
  epoch draws from the data found or the published sizes;
- **throughputs**: training and inference images/s per architecture. The user's own
  figures from `python -m benchmarks.gpu` (its JSON, `reports/gpu_benchmark.json`) win;
  else timm's published training benchmark on an RTX 3090 (`REFERENCE_RATES`) scaled to
  the named GPU by memory bandwidth (`GPUS`); `cpu` is measured on this machine.

A run's seconds = epochs × (train images / train rate + val images / inference rate) +
test and external test images (twice with TTA) / inference rate + a fixed cost per run and
per notebook (`RUN_OVERHEAD_S`, `STEP_OVERHEAD_S`). Early stopping can only shorten it: the
plan is an upper bound on epochs. Everything here is arithmetic on plain values; only
`measure_cpu_rates` runs a model.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .run_sizes import RunCost

__all__ = ["Gpu", "GPUS", "REFERENCE_RATES", "Rates", "PlanError", "gpu_named",
           "load_figures", "measure_cpu_rates", "rates_for", "run_seconds", "run_disk_bytes",
           "SESSION_HOURS"]


class PlanError(ValueError):
    """A value the plan cannot price (an unknown GPU, a GPU the torch build cannot run)."""


@dataclass(frozen=True)
class Gpu:
    """A GPU the plan can price: its name, memory bandwidth and compute capability."""

    name: str
    bandwidth_gbs: float        # NVIDIA's datasheet figure
    capability: tuple[int, int]


# Memory bandwidth (GB/s) from NVIDIA's datasheets. Training a CNN or ViT at batch 32 with
# mixed precision is mostly memory-bound on these cards, so a rate measured on one card
# scales to another by this ratio: the T4 comes out at 0.34 of the RTX 3090 (the rule of
# thumb "a T4 runs at about a third of a 3090"). An estimate, replaced by the user's own
# `python -m benchmarks.gpu` figures once measured.
GPUS: dict[str, Gpu] = {
    "t4": Gpu("NVIDIA T4", 320, (7, 5)),          # Kaggle (2x), Colab free tier
    "l4": Gpu("NVIDIA L4", 300, (8, 9)),          # Colab; its 48 MB L2 makes this pessimistic
    "p100": Gpu("NVIDIA P100", 732, (6, 0)),      # Kaggle's other GPU
    "a100": Gpu("NVIDIA A100 40GB", 1555, (8, 0)),
    "h100": Gpu("NVIDIA H100 SXM", 3350, (9, 0)),
}
REFERENCE_GPU = Gpu("NVIDIA GeForce RTX 3090", 936, (8, 6))
# Training images/s at 224 px with AMP on an RTX 3090 (timm's
# results/benchmark-train-amp-nchw-pt112-cu113-rtx3090.csv, huggingface/pytorch-image-models;
# synthetic data, no loader, batch 96-512). efficientnet_b4 was measured at 320 px (293.1)
# and is scaled to 224 by pixels; the stand-ins without a published figure take the closest
# published network's rate (simple_cnn: resnet18's, an upper bound on its time: it has 1/16
# of resnet18's FLOPs; vit_mini: vit_tiny's; mixer_tiny: mixer_s16's).
REFERENCE_RATES: dict[str, float] = {
    "resnet18": 2764.22, "resnet18_scratch": 2764.22, "simple_cnn": 2764.22,
    "resnet50": 826.06, "densenet121": 730.11, "chexnet": 730.11,
    "efficientnet_b4": 293.1 * (320 / 224) ** 2, "efficientnet_b0": 1459.11,
    "vit": 390.86, "vit_small": 1052.92, "vit_tiny": 2293.54, "vit_mini": 2293.54,
    "mixer": 528.02, "mixer_small": 1543.23, "mixer_tiny": 1543.23,
}
# A forward pass costs about a third of a training step (the backward pass is ~2 forwards).
EVAL_SPEEDUP = 3.0
# Seconds a notebook costs beyond its training: kernel start, imports, data checks, plots,
# the HTML report (measured on the demo's 07_comparison: 12-16 s on the 2-core VM); and
# per run (model build, checkpoint writes, the bootstrap CIs).
STEP_OVERHEAD_S, RUN_OVERHEAD_S = 15.0, 3.0
# Hours a hosted session lasts (Kaggle notebooks and Colab's free tier stop at 12 h).
SESSION_HOURS = {"kaggle": 12.0, "colab": 12.0}

def gpu_named(name: str) -> Gpu | None:
    """The GPU of `--gpu NAME` (`cpu` is None); an unknown name or a GPU the installed
    torch build has no kernels for is a `PlanError` naming the choices or the fix."""
    key = name.strip().lower()
    if key == "cpu":
        return None
    if key not in GPUS:
        raise PlanError(f"--gpu {name!r} is not one of {', '.join([*GPUS, 'cpu'])}")
    gpu = GPUS[key]
    supported = _build_capabilities()
    if supported and gpu.capability < min(supported):
        import torch

        raise PlanError(
            f"--gpu {key}: the {gpu.name} has compute capability {gpu.capability[0]}."
            f"{gpu.capability[1]}, and the installed torch {torch.__version__} (CUDA "
            f"{torch.version.cuda}) ships kernels for {', '.join(torch.cuda.get_arch_list())} "
            f"only: on Kaggle pick the T4 x2 accelerator, or install a torch build for CUDA "
            f"12.6 (pip install torch==2.14.1 torchvision==0.29.1 --index-url "
            f"https://download.pytorch.org/whl/cu126), which still supports sm_60")
    return gpu


def _build_capabilities() -> list[tuple[int, int]]:
    """The compute capabilities the installed torch build has kernels for (sm_75 -> (7, 5))."""
    try:
        import torch

        arches = torch.cuda.get_arch_list()
    except Exception:  # noqa: BLE001 - a CPU-only build: nothing to check against
        return []
    return sorted((int(a[3:-1]), int(a[-1])) for a in arches if a.startswith("sm_"))


# --- throughputs --------------------------------------------------------------------------
@dataclass(frozen=True)
class Rates:
    """Images/s one process trains and infers at, and where the figure came from."""

    train: float
    eval: float
    source: str


def load_figures(path: str | Path) -> dict[str, Any] | None:
    """The JSON `python -m benchmarks.gpu` wrote (schema 1), or None when absent."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        figures = json.loads(path.read_text())
    except ValueError as exc:
        raise PlanError(f"{path} is not JSON ({exc}): re-run python -m benchmarks.gpu") from exc
    if figures.get("schema") != 1:
        raise PlanError(f"{path} has schema {figures.get('schema')!r}, this version reads 1: "
                        f"re-run python -m benchmarks.gpu")
    return figures


def _measured(figures: dict[str, Any], model: str, size: int) -> Rates | None:
    """The user's own figure for `model` (AMP + channels_last, fit's mode on CUDA), scaled
    to `size` by pixels when it was measured at another size."""
    rows = [r for r in figures.get("models", []) if r.get("model") == model and not r.get("error")
            and r.get("train_images_per_s") and r.get("mode") == "amp+channels_last"]
    if not rows:
        return None
    row = min(rows, key=lambda r: abs(r.get("image_size", size) - size))
    scale = (row.get("image_size", size) / size) ** 2
    train = row["train_images_per_s"] * scale
    evaluation = (row.get("eval_images_per_s") or train / scale * EVAL_SPEEDUP) * scale
    device = (figures.get("device") or {}).get("name", "your GPU")
    return Rates(train, evaluation, f"measured on {device} (benchmarks.gpu)")


def rates_for(model: str, size: int, gpu: Gpu | None, figures: dict[str, Any] | None = None,
              cpu_rates: dict[str, Rates] | None = None) -> Rates:
    """Training and inference images/s of one process for `model` at `size` px."""
    if gpu is None:
        if not cpu_rates or model not in cpu_rates:
            raise PlanError(f"no CPU throughput for {model}: measure_cpu_rates first")
        return cpu_rates[model]
    if figures and (mine := _measured(figures, model, size)):
        return mine
    if model not in REFERENCE_RATES:
        raise PlanError(f"no throughput for model {model!r}: run python -m benchmarks.gpu "
                        f"--models {model} on the GPU")
    train = REFERENCE_RATES[model] * gpu.bandwidth_gbs / REFERENCE_GPU.bandwidth_gbs \
        * (224 / size) ** 2
    return Rates(train, train * EVAL_SPEEDUP,
                 f"timm's RTX 3090 figure x {gpu.bandwidth_gbs:g}/{REFERENCE_GPU.bandwidth_gbs:g}"
                 f" GB/s")


def measure_cpu_rates(models: Iterable[str], size: int, batch: int, steps: int = 3
                      ) -> dict[str, Rates]:
    """Train and inference images/s of each model on this machine's CPU with `fit`'s own
    step (`TrainStep`: fused AdamW, channels_last, the BatchNorm policy), from `steps` timed
    steps after one warm-up. A look-alike loop in the default memory format measured
    DenseNet-121 at 64 px 37-41 images/s where `fit` trains it at 45-47 (2-core VM)."""
    import torch

    from ..config import make_config
    from ..models.registry import create_model
    from ..training.loop import TrainStep

    out = {}
    for name in dict.fromkeys(models):
        torch.manual_seed(0)
        model = create_model(name, 1, pretrained=False, image_size=size)
        cfg = make_config({"model": name, "image_size": size, "batch_size": batch,
                           "device": "cpu", "pretrained": False}, profile="full")
        step = TrainStep(model, cfg, torch.nn.BCEWithLogitsLoss(), "cpu")
        x, y = torch.randn(batch, 1, size, size), torch.ones(batch, 1)
        try:
            train = _rate(lambda: step(x, y), batch, steps)
            evaluation = _rate(lambda: step.infer(x), batch, steps)
        finally:
            step.close()
        out[name] = Rates(train, evaluation, "measured on this CPU now")
    return out


def _rate(fn, batch: int, steps: int) -> float:
    fn()  # warm-up: allocator and kernel choice
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return steps * batch / (time.perf_counter() - start)


# --- seconds and bytes --------------------------------------------------------------------
def run_seconds(run: RunCost, rates: Rates) -> float:
    """Upper bound on one run's wall time (every epoch; DDP scales the training part)."""
    # head-only training runs the frozen backbone forward only: about an inference pass
    train_rate = rates.eval if run.frozen else rates.train * _ddp_scaling(run.processes)
    per_epoch = run.train_images / train_rate + run.val_images / rates.eval
    tests = run.test_images * (2 if run.tta else 1) + 2 * run.val_images  # + threshold, BN
    return run.epochs * per_epoch + tests / rates.eval + RUN_OVERHEAD_S


def _ddp_scaling(processes: int) -> float:
    """Speed-up of N data-parallel processes: 0.9 per extra process (gradient all-reduce
    over PCIe on 2xT4; NVIDIA's DGX figures show 0.84-0.97 per GPU)."""
    return 1.0 + 0.9 * (processes - 1)


def run_disk_bytes(run: RunCost, params: int) -> int:
    """`best.pt` (fp32 weights) that a finished run keeps."""
    return params * 4 + 200_000  # + history, config and metadata


def hours(seconds: float) -> float:
    return seconds / 3600.0


def fmt_hours(seconds: float) -> str:
    """'3.4 h', or minutes under an hour."""
    if math.isnan(seconds):
        return "?"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"
