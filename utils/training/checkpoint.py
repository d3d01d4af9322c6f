"""Checkpoints: read back what `fit` wrote, rebuild the model, and amend fields atomically.

A checkpoint is a plain dict (tensors and builtins only, so it loads with
`weights_only=True`). `best.pt` holds what inference, the Grad-CAM gallery and
`init_checkpoint` read: model name and weights, config, class names, input size,
normalisation, history, and the validation-chosen threshold once evaluation adds it.
`last.pt` adds what only a resume needs (optimizer, scheduler and scaler state, every rank's
RNG state); `utils.study.experiment.evaluate_and_record` deletes it when the run has finished,
unless `keep_last`. Both load with the functions below.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..fileio import atomic_torch_save
from ..runtime import pick_device
from ..torchio import CheckpointError, read_torch_file, unsafe_file_error  # noqa: F401 (re-export)

__all__ = ["CheckpointError", "read_torch_file", "load_checkpoint", "load_model",
           "update_checkpoint", "plain", "checkpoint_bytes"]


def plain(obj: Any) -> Any:
    """Builtins only, so checkpoints load with `weights_only=True`."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, (np.generic, np.ndarray)):
        return obj.tolist()
    return str(obj) if isinstance(obj, Path) else obj


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `fit`, with an error that names the file and the fix.

    Raises:
        FileNotFoundError: no such file. CheckpointError: truncated, corrupt or not ours.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (run the training step "
                                f"first, or check checkpoint_dir and step)")
    ckpt = read_torch_file(path, map_location=map_location)
    if not isinstance(ckpt, dict) or "model_state" not in ckpt:
        raise CheckpointError(f"{path} is not a cxr-pneumonia checkpoint (no model_state)")
    return ckpt


def load_model(path: str | Path, device=None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the registry model a checkpoint names and load its weights (eval mode).

    Example:
        >>> model, ckpt = load_model("checkpoints/demo/best.pt")  # doctest: +SKIP
    """
    from ..models.registry import create_model  # lazy: train must not need every model family

    ckpt = load_checkpoint(path)
    model = create_model(ckpt["model_name"], ckpt["num_classes"], pretrained=False,
                         image_size=ckpt["input_size"],
                         dropout=ckpt.get("config", {}).get("dropout", 0.0))
    source = ckpt.get("config", {}).get("pretrained", False)
    if isinstance(source, str):  # xrv weights: model.info keeps their pixel scaling
        from ..models.registry import model_info

        model.info = model_info(ckpt["model_name"], pretrained=source)
    try:
        model.load_state_dict(ckpt["model_state"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: its weights do not fit {ckpt['model_name']!r} "
                              f"as the registry builds it now: {exc}") from exc
    device = torch.device(device) if device is not None else pick_device("auto")
    return model.to(device).eval(), ckpt


def update_checkpoint(path: str | Path, **fields: Any) -> Path:
    """Add or replace fields (e.g. the validation-chosen `threshold`), atomically."""
    ckpt = load_checkpoint(path)
    ckpt.update(plain(fields))
    return atomic_torch_save(ckpt, path)


def checkpoint_bytes(checkpoint_dir: str | Path, run: str) -> int:
    """Bytes on disk under `checkpoint_dir/run/` (0 when absent), for the index's disk column."""
    folder = Path(checkpoint_dir) / run
    if not folder.is_dir():
        return 0
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
