"""Where and how a run executes: device choice, seeding, environment facts for the report.

`pick_device` never falls back to the CPU in silence: when an NVIDIA GPU is present
(`/proc/driver/nvidia/version` or `nvidia-smi`) but torch cannot use it (its CUDA build
needs a newer driver, or it is a CPU-only build), or the GPU is one the build has no kernels
for (Kaggle's P100, compute capability 6.0), it stops with one `CudaSetupError` naming the
versions and the install command, before any work. `device="cpu"` trains on the CPU on
purpose.
"""
from __future__ import annotations

import functools
import os
import platform
import random
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["RunContext", "pick_device", "amp_dtype", "autocast", "seed_everything", "environment", "in_colab",
           "usable_cpus", "loader_workers", "configure_cudnn", "nvidia_driver", "cuda_problem",
           "CudaSetupError", "MIN_DRIVER"]

# The oldest Linux driver each CUDA major version runs on (NVIDIA's CUDA toolkit release
# notes, "CUDA Toolkit and Minimum Required Driver Version for CUDA Minor Version
# Compatibility"): torch==2.14.1 from PyPI is a CUDA 13.0 build.
MIN_DRIVER = {13: "580", 12: "525.60.13", 11: "450.80.02"}
DRIVER_FILE = Path("/proc/driver/nvidia/version")  # the kernel module's version (Linux)
# the build for older drivers (CUDA 12.6: driver 525.60.13 or newer; kernels from sm_50)
OLDER_BUILD = "cu126"


class CudaSetupError(RuntimeError):
    """An NVIDIA GPU torch cannot use as installed: the message names versions and the fix."""


def usable_cpus() -> int:
    """The cores this process may run on (a container's or taskset's share, not the host's):
    what run_all's side-by-side kernels and torchrun's workers split their threads over."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def loader_workers(requested: int) -> int:
    """DataLoader workers for this process: the usable CPUs shared among the training
    processes on this machine (torchrun's `LOCAL_WORLD_SIZE`), at most `requested`.

    Kaggle's 2 GPUs come with 4 vCPUs: 2 ranks x 4 workers ran 8 loader processes (plus the
    ranks) on 4 cores; now each rank gets 2.
    """
    ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    return max(0, min(requested, usable_cpus() // ranks))


def configure_cudnn(device: "torch.device | str", deterministic: bool) -> bool:
    """cuDNN autotuning (`cudnn.benchmark`) for training on CUDA at the run's fixed image
    size, unless the run asks for bit-exact determinism (`RunConfig.deterministic`, which
    also selects deterministic kernels). Returns whether autotuning is on (recorded in the
    results JSON as `training.cudnn_benchmark`)."""
    import torch

    benchmark = torch.device(device).type == "cuda" and not deterministic
    torch.backends.cudnn.benchmark = benchmark
    torch.backends.cudnn.deterministic = deterministic
    if deterministic:  # cuBLAS needs this before its first call to be deterministic
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    return benchmark


@functools.lru_cache(maxsize=1)
def nvidia_driver() -> str | None:
    """The NVIDIA driver's version when an NVIDIA GPU is installed, else None: read from
    `/proc/driver/nvidia/version` (Linux), else asked of `nvidia-smi` (5 s at most)."""
    try:
        text = DRIVER_FILE.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    found = re.search(r"\b(\d{3,}\.\d+(?:\.\d+)?)\b", text)
    if found:
        return found.group(1)
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = out.stdout.strip().splitlines() if out.returncode == 0 else []
    return lines[0].strip() if lines and re.match(r"\d", lines[0].strip()) else None


def _install_command() -> str:
    import torch

    version = torch.__version__.split("+")[0]
    try:
        vision = f" torchvision=={metadata.version('torchvision').split('+')[0]}"
    except metadata.PackageNotFoundError:
        vision = ""
    return (f"pip install torch=={version}{vision} --index-url "
            f"https://download.pytorch.org/whl/{OLDER_BUILD}")


def _unusable(driver: str) -> str:
    """Why torch sees no CUDA device although an NVIDIA driver is installed."""
    import torch

    build = torch.version.cuda
    if build is None:
        return (f"this machine has an NVIDIA GPU (driver {driver}) but torch "
                f"{torch.__version__} is a CPU-only build: install a CUDA build, e.g. "
                f"`{_install_command()}`, or set device='cpu' to train on the CPU on purpose")
    need = MIN_DRIVER.get(int(build.split(".")[0]), "?")
    return (f"this machine has an NVIDIA GPU but torch cannot use it: torch "
            f"{torch.__version__} is built for CUDA {build}, which needs NVIDIA driver {need} "
            f"or newer, and the driver here is {driver}. Update the driver, or install the "
            f"CUDA 12.6 build of the same torch (driver {MIN_DRIVER[12]} or newer): "
            f"`{_install_command()}`; or set device='cpu' to train on the CPU on purpose")


def _has_kernels(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """Whether a build compiled for `arch_list` runs on a GPU of `capability`: a cubin for
    the same major version and a lower or equal minor one, or PTX it can JIT-compile."""
    if not arch_list:  # nothing to compare against
        return True
    for arch in arch_list:
        found = re.fullmatch(r"(sm|compute)_(\d+)(\d)([a-z]?)", arch)
        if not found:
            continue
        kind, special = found.group(1), found.group(4)
        major, minor = int(found.group(2)), int(found.group(3))
        if special and (major, minor) != capability:  # sm_90a: that exact GPU only
            continue
        if kind == "sm" and major == capability[0] and minor <= capability[1]:
            return True
        if kind == "compute" and (major, minor) <= capability:
            return True
    return False


def _no_kernels(index: int) -> str | None:
    import torch

    capability = tuple(torch.cuda.get_device_capability(index))
    arch_list = torch.cuda.get_arch_list()
    if _has_kernels(capability, arch_list):
        return None
    name = torch.cuda.get_device_name(index)
    return (f"GPU {index}, {name}, has compute capability {capability[0]}.{capability[1]}, "
            f"but torch {torch.__version__} (CUDA {torch.version.cuda}) has kernels only for "
            f"{', '.join(arch_list)}: every CUDA call would fail with 'no kernel image is "
            f"available'. Install a build with kernels for it, e.g. `{_install_command()}` "
            f"(PyTorch builds CUDA 12.6 wheels from sm_50; check with "
            f"torch.cuda.get_arch_list()), or set device='cpu'")


def cuda_problem() -> str | None:
    """Why the NVIDIA GPU(s) here cannot train with this torch, or None when they can (or
    when there is no NVIDIA GPU, or `CUDA_VISIBLE_DEVICES` hides them on purpose)."""
    import torch

    if torch.cuda.is_available():
        return next(filter(None, (_no_kernels(i) for i in range(torch.cuda.device_count()))),
                    None)
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES", None)
    if hidden is not None and hidden.strip() in ("", "-1"):
        return None
    driver = nvidia_driver()
    return _unusable(driver) if driver else None


def pick_device(requested: str = "auto") -> "torch.device":
    """CUDA, else Apple MPS, else CPU; an explicit request that is unavailable is an error,
    and so is an NVIDIA GPU that torch cannot use (`CudaSetupError`, for 'auto' and 'cuda':
    never a silent fallback to the CPU)."""
    import torch

    if requested in ("auto", "cuda") and (problem := cuda_problem()):
        raise CudaSetupError(problem)
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for but no CUDA GPU is visible; "
                           "use device='auto' or 'cpu'")
    return torch.device(requested)


def amp_dtype() -> "torch.dtype":
    """The mixed-precision policy: bf16 on GPUs that run it natively (Ampere and later), else
    fp16 (T4, V100: a GradScaler is needed). `including_emulation=False`: torch's default
    also says yes to emulated bf16 on older GPUs, which is slow and would switch the scaler
    off there."""
    import torch

    native = torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.bfloat16 if native else torch.float16


def autocast(device: "torch.device | str", enabled: bool = True):
    """Mixed precision on CUDA only (`amp_dtype()`); a no-op elsewhere."""
    import contextlib

    import torch

    device = torch.device(device)
    if not (enabled and device.type == "cuda"):
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=amp_dtype())


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (all devices); optionally force deterministic kernels."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    if deterministic:
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)


def in_colab() -> bool:
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def environment() -> dict[str, str]:
    """Versions and hardware, printed in every notebook's setup cell and kept in results."""
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpus": str(os.cpu_count()),
        "colab": str(in_colab()),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }
    # package metadata, not imports: importing timm/torchvision/sklearn only to read their
    # versions cost ~6 s in every notebook's setup cell
    for key, dist in (("torchvision", "torchvision"), ("timm", "timm"),
                      ("albumentations", "albumentations"), ("pydicom", "pydicom"),
                      ("sklearn", "scikit-learn")):
        try:
            info[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[key] = "missing"
    return info


@dataclass
class RunContext:
    """What `utils.study.notebook.setup` resolved besides the config: where things are and
    what runs them (the device, the data root, whether the data is synthetic)."""

    device: Any
    data_root: Path
    synthetic: bool
    repo_root: Path
    environment: dict[str, str]
