"""Atomic writes: a crash never leaves a half checkpoint, report, cache or results JSON;
and the one reader of the JSON files those writes leave (`read_json`).

Everything is written to a temporary file in the destination folder, flushed to disk, then
renamed over the target (`os.replace` is atomic on POSIX and Windows within one volume).
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "atomic_write_json",
           "atomic_torch_save", "read_json"]


def read_json(path: str | os.PathLike | None) -> dict[str, Any] | None:
    """The JSON object in `path`; None when there is no path or file, or it is unreadable,
    not JSON or not an object (a state file, record or results JSON half-written elsewhere
    counts as absent: atomic writes never leave one here)."""
    if path is None:
        return None
    try:
        found = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


@contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only on success.

    Example:
        >>> with atomic_path("out.png") as tmp:  # doctest: +SKIP
        ...     fig.savefig(tmp, format="png")
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:  # make the bytes durable before the rename
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; reports must be readable
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def atomic_write_text(target: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_json(target: str | os.PathLike, obj: Any) -> Path:
    """JSON with sorted keys; numpy scalars/arrays are converted by `default`."""
    return atomic_write_text(target, json.dumps(obj, indent=2, sort_keys=True, default=_to_builtin))


def atomic_torch_save(obj: Any, target: str | os.PathLike) -> Path:
    import torch  # local: fileio must not force torch on plot/report code

    with atomic_path(target) as tmp:
        torch.save(obj, tmp)
    return Path(target)


def _to_builtin(obj: Any) -> Any:
    if hasattr(obj, "tolist"):      # numpy arrays and scalars, torch tensors
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")
