"""Reading `.pt` files safely: `torch.load(weights_only=True)` with errors that name the file.

A pickle can call anything while it loads (`__reduce__`); tensors and plain values cannot.
Every reader of the project (checkpoints, `init_checkpoint`, torchxrayvision files) goes
through here, so a checkpoint from a stranger never runs code. No project imports.
"""
from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "read_torch_file", "unsafe_file_error"]


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated or not one of ours."""


def read_torch_file(path: str | Path, what: str = "checkpoint",
                    map_location: Any = "cpu") -> Any:
    """`torch.load(weights_only=True)`: tensors and plain values only, so a file from a
    stranger cannot run code while it loads (a pickle's `__reduce__` can call anything).

    Args:
        what: how the errors name the file ("checkpoint", "init_checkpoint"...).
    Raises:
        CheckpointError: truncated or corrupt, or it holds other objects (named).
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):
            raise CheckpointError(f"corrupt or incomplete {what} {path}: delete it and "
                                  f"re-run") from exc
        raise unsafe_file_error(what, path, exc) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"corrupt or incomplete {what} {path}: delete it and "
                              f"re-run ({type(exc).__name__})") from exc


def unsafe_file_error(what: str, path: str | Path, exc: Exception) -> CheckpointError:
    """The refusal of a file whose pickle calls something (named) beyond tensors/builtins."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
    return CheckpointError(f"{what} {path} holds objects other than tensors and plain values "
                           f"({found[1] if found else 'code'}), so it was not loaded: loading "
                           f"it could run code. Only if you trust its author, re-save its "
                           f"tensors with torch.load(weights_only=False) and "
                           f"torch.save(obj.state_dict())")
