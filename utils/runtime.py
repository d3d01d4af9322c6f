"""Where and how a run executes: device choice, seeding, environment facts for the report."""
from __future__ import annotations

import os
import platform
from importlib import metadata
import random
import sys

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["pick_device", "amp_dtype", "autocast", "seed_everything", "environment", "in_colab",
           "usable_cpus"]


def usable_cpus() -> int:
    """The cores this process may run on (a container's or taskset's share, not the host's):
    what run_all's side-by-side kernels and torchrun's workers split their threads over."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def pick_device(requested: str = "auto") -> "torch.device":
    """CUDA, else Apple MPS, else CPU; an explicit request that is unavailable is an error."""
    import torch

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
