"""A cache build's state on disk: its folder, the log of finished chunks, the build lock.

`cache.build_cache` decodes; this module decides what a (partial) folder may be trusted
with. See `cache.py`'s docstring for the folder layout and why the done log is synced in
batches (`SYNC_SECONDS`) rather than per chunk.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from ..fileio import atomic_write_json, read_json

__all__ = ["SYNC_SECONDS", "DoneLog", "build_lock", "prepare", "read_done"]

SYNC_SECONDS = 5.0     # fsync the arrays (then log finished chunks) at most this often

log = logging.getLogger(__name__)


@contextmanager
def build_lock(folder: Path) -> Iterator[None]:
    """One builder per cache folder on this machine; a second one waits for it."""
    from filelock import FileLock, Timeout  # lazy: only builds need it

    user = os.getuid() if hasattr(os, "getuid") else "user"
    locks = Path(tempfile.gettempdir()) / f"cxr-cache-locks-{user}"
    locks.mkdir(exist_ok=True)
    digest = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:32]
    lock = FileLock(locks / f"{digest}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.warning("another process is building the image cache %s; waiting for it", folder)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def prepare(folder: Path, settings: dict, paths: list[str],
            chunk_size: int) -> tuple[set[int], int]:
    """Reuse a partial build of the same key (done chunks, its chunk size) or start afresh."""
    n, side = len(paths), settings["cache_size"]
    state = read_json(folder / "progress.json")
    if state and state.get("key") == settings["key"] and _arrays_ok(folder, n, side):
        size = int(state["chunk_size"])
        logged = read_done(folder / "done.log", -(-n // size))
        return set(state.get("done", [])) | logged, size  # "done": builds before done.log
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for name, dtype, shape in (("images", np.uint8, (n, side, side)),
                               ("sizes", np.int32, (n, 2))):
        np.lib.format.open_memmap(folder / f"{name}.npy", "w+", dtype, shape).flush()
    atomic_write_json(folder / "meta.json", {**settings, "paths": paths})
    atomic_write_json(folder / "progress.json",  # last: the folder is ready
                      {"key": settings["key"], "chunk_size": chunk_size})
    return set(), chunk_size


def read_done(path: Path, n_chunks: int) -> set[int]:
    """Chunk ids in `done.log`; a line without its newline (a torn write) does not count."""
    try:
        lines = path.read_bytes().decode("ascii", "replace").split("\n")[:-1]
    except OSError:
        return set()
    return {int(x) for x in lines if x.isascii() and x.isdigit() and int(x) < n_chunks}


def _arrays_ok(folder: Path, n: int, side: int) -> bool:
    """Both arrays open with the shapes this build needs (else the folder starts afresh)."""
    try:
        images = np.load(folder / "images.npy", mmap_mode="r")
        sizes = np.load(folder / "sizes.npy", mmap_mode="r")
    except (OSError, ValueError):
        return False
    return images.shape == (n, side, side) and sizes.shape == (n, 2)



class DoneLog:
    """Chunks finished since the last sync; `commit` makes their pixels durable, then logs them."""

    def __init__(self, folder: Path, done: set[int]):
        self.folder, self.done, self.pending = folder, done, []
        self.last_sync = time.monotonic()

    def add(self, chunk_id: int) -> None:
        self.pending.append(chunk_id)
        if time.monotonic() - self.last_sync >= SYNC_SECONDS:
            self.commit()

    def commit(self) -> None:
        if not self.pending:
            return
        for name in ("images.npy", "sizes.npy"):  # the workers' memmap writes, to disk
            with open(self.folder / name, "rb+") as fh:
                os.fsync(fh.fileno())
        with open(self.folder / "done.log", "a", encoding="ascii") as fh:
            fh.write("".join(f"{c}\n" for c in self.pending))
        self.done.update(self.pending)
        self.pending.clear()
        self.last_sync = time.monotonic()
