"""Pre-resized uint8 image cache: decode every image once, then train from a memmap.

Why: decoding a full-resolution X-ray (1-4 MP PNG/JPEG/DICOM) costs tens of milliseconds and
dominates a CPU input pipeline epoch after epoch; reading a 224×224 uint8 row of a memmap
costs microseconds. The cache stores `cv2.resize(read_image(p), (S, S),
interpolation=cv2.INTER_AREA)` (large JPEGs decoded at reduced scale unless `draft=False`),
so cached and uncached eval tensors agree when the eval transform also resizes with
INTER_AREA.

Layout of `cache_dir/<key>/` (key: sha256 of paths + file sizes + mtimes + size + margin +
draft + CACHE_VERSION: a changed file list, file or size is a new folder, never a reuse):

    images.npy     N×S×S uint8, opened read-only as a memmap (rows aligned with the manifest)
    sizes.npy      N×2 int32 original (h, w) of each image, to rescale boxes
    meta.json      key, version, size, margin, draft, cache_size, paths
    progress.json  completed chunk ids: an interrupted build resumes where it stopped
    complete       written last; a folder without it is a partial build
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from tqdm.auto import tqdm

from ..fileio import atomic_write_json, atomic_write_text
from .images import BadImageError, image_size, read_image

__all__ = ["CACHE_VERSION", "CacheError", "ImageCache", "build_cache", "cache_key"]

CACHE_VERSION = 1      # bump when the stored pixels change (reader, interpolation, layout)
CHUNK_SIZE = 64        # images per task: the unit of parallel work and of resume
_MAX_LISTED = 10       # failures named in the error message


class CacheError(RuntimeError):
    """A cache that cannot be built or opened (bad images, missing files, partial folder)."""


def cache_key(paths: Sequence[str], size: int, margin: float = 1.0,
              draft: bool = True) -> str:
    """sha256 of the source files (path, byte size, mtime, in order) and the cache settings.

    Example:
        >>> cache_key(["/data/a.png"], 224)  # doctest: +SKIP
        '3f9c...'
    """
    files, missing = [], []
    for p in paths:
        try:
            st = os.stat(p)
        except FileNotFoundError:
            missing.append(str(p))
            continue
        files.append([str(p), st.st_size, st.st_mtime_ns])
    if missing:
        raise CacheError(f"{len(missing)} manifest file(s) do not exist, e.g. {missing[:3]}; "
                         f"rebuild the manifest from the data folder")
    blob = json.dumps([CACHE_VERSION, int(size), float(margin), bool(draft), files]).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def build_cache(manifest, size: int, cache_dir: str | os.PathLike = "data/cache", *,
                workers: int | None = None, margin: float = 1.0, draft: bool = True,
                force: bool = False, chunk_size: int = CHUNK_SIZE,
                progress: bool = True) -> "ImageCache":
    """Decode, resize (INTER_AREA) and store every manifest image once; return the cache.

    The stored side is `round(size * margin)`. The default margin 1.0 stores the training
    resolution itself: random crops and rotations are then taken at that resolution and
    resized back, which costs a little sharpness but nothing in speed or disk; pass e.g.
    1.15 to keep headroom for RandomResizedCrop.

    Args:
        manifest: DataFrame with a `path` column (or a sequence of paths); row i → cache[i].
        size: output side in pixels (the model's input size).
        cache_dir: parent folder; the cache lives in `cache_dir/<key>/`.
        workers: processes decoding in parallel (default `os.cpu_count()`; 1 = in-process).
        margin: stored side / size, >= 1.
        draft: decode JPEGs at least twice the stored side at reduced scale (PIL draft
            mode via `read_image(max_side=...)`: 2-8× less decoding; pixels differ from
            a full decode by ~1/255 on average). False = exactly
            `cv2.resize(read_image(path), (S, S), interpolation=cv2.INTER_AREA)` for every file.
        force: delete and rebuild even a complete cache.
        chunk_size: images per parallel task and per resume step.
        progress: show a tqdm bar.

    Example:
        >>> cache = build_cache(manifest, 224, "data/cache")  # doctest: +SKIP
        >>> cache[0].shape, cache.original_size(0)            # doctest: +SKIP
        ((224, 224), (1858, 2090))
    """
    paths = _paths_of(manifest)
    if margin < 1.0:
        raise CacheError(f"margin={margin} must be >= 1 (the cache must not be smaller "
                         f"than the output size)")
    if not paths:
        raise CacheError("the manifest is empty: there is nothing to cache")
    cache_size = int(round(size * margin))
    key = cache_key(paths, size, margin, draft)
    folder = Path(cache_dir) / key
    if force and folder.exists():
        shutil.rmtree(folder)
    if (folder / "complete").exists():
        return ImageCache.open(folder)

    settings = {"key": key, "version": CACHE_VERSION, "size": size, "margin": margin,
                "cache_size": cache_size, "draft": draft, "count": len(paths)}
    done, chunk_size = _prepare(folder, settings, paths, chunk_size)
    chunks = [(c, c * chunk_size, paths[c * chunk_size:(c + 1) * chunk_size])
              for c in range(-(-len(paths) // chunk_size)) if c not in done]
    failures = _run_chunks(folder, chunks, done, settings, chunk_size,
                           workers or os.cpu_count() or 1, progress, len(paths))
    if failures:
        shutil.rmtree(folder)  # its key names these exact files: it could never be reused
        listed = "\n".join("  " + (msg if p in msg else f"{p}: {msg}")
                           for p, msg in failures[:_MAX_LISTED])
        raise CacheError(f"{len(failures)} of {len(paths)} images could not be read, so the "
                         f"cache {folder} was not written:\n{listed}\nFix or remove these "
                         f"files (and rebuild the manifest), then build the cache again.")
    atomic_write_text(folder / "complete", key)  # last: only now may the cache be trusted
    return ImageCache.open(folder)


def _paths_of(manifest) -> list[str]:
    if hasattr(manifest, "columns"):
        if "path" not in manifest.columns:
            raise CacheError(f"the manifest has no 'path' column (columns: "
                             f"{list(manifest.columns)})")
        return [str(p) for p in manifest["path"]]
    return [str(p) for p in manifest]


def _prepare(folder: Path, settings: dict, paths: list[str],
             chunk_size: int) -> tuple[set[int], int]:
    """Reuse a partial build of the same key (done chunks, its chunk size) or start afresh."""
    n, side = len(paths), settings["cache_size"]
    state = _read_json(folder / "progress.json")
    if state and state.get("key") == settings["key"] and _arrays_ok(folder, n, side):
        return set(state["done"]), int(state["chunk_size"])
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for name, dtype, shape in (("images", np.uint8, (n, side, side)),
                               ("sizes", np.int32, (n, 2))):
        np.lib.format.open_memmap(folder / f"{name}.npy", "w+", dtype, shape).flush()
    atomic_write_json(folder / "meta.json", {**settings, "paths": paths})
    _write_progress(folder, settings["key"], chunk_size, set())  # last: the folder is ready
    return set(), chunk_size


def _write_progress(folder: Path, key: str, chunk_size: int, done: set[int]) -> None:
    atomic_write_json(folder / "progress.json",
                      {"key": key, "chunk_size": chunk_size, "done": sorted(done)})


def _arrays_ok(folder: Path, n: int, side: int) -> bool:
    try:
        images = np.load(folder / "images.npy", mmap_mode="r")
        sizes = np.load(folder / "sizes.npy", mmap_mode="r")
    except (OSError, ValueError):
        return False
    return images.shape == (n, side, side) and sizes.shape == (n, 2)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _run_chunks(folder: Path, chunks: list, done: set[int], settings: dict, chunk_size: int,
                workers: int, progress: bool, total: int) -> list[tuple[str, str]]:
    """Decode the pending chunks (in a process pool when workers > 1); record each one done."""
    failures: list[tuple[str, str]] = []
    side, draft = settings["cache_size"], settings["draft"]
    bar = tqdm(total=total, initial=total - sum(len(c[2]) for c in chunks),
               desc=f"caching {side}px", unit="img", disable=not progress)

    def record(chunk_id: int, n_images: int, chunk_failures: list) -> None:
        failures.extend(chunk_failures)
        if not chunk_failures:  # a chunk with holes is never marked done
            done.add(chunk_id)
            _write_progress(folder, settings["key"], chunk_size, done)
        bar.update(n_images)

    try:
        if workers <= 1 or len(chunks) <= 1:
            for cid, start, chunk_paths in chunks:
                record(cid, len(chunk_paths),
                       _build_chunk(str(folder), start, chunk_paths, side, draft))
        else:
            with ProcessPoolExecutor(max_workers=min(workers, len(chunks))) as pool:
                futures = {pool.submit(_build_chunk, str(folder), start, chunk_paths, side,
                                       draft): (cid, len(chunk_paths))
                           for cid, start, chunk_paths in chunks}
                try:
                    for fut in as_completed(futures):
                        record(*futures[fut], fut.result())
                except BaseException:  # Ctrl-C or a crash: do not decode the rest first
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
    finally:
        bar.close()
    return sorted(failures)


def _build_chunk(folder: str, start: int, paths: Sequence[str], side: int,
                 draft: bool) -> list[tuple[str, str]]:
    """Worker: decode + resize one chunk straight into the memmaps; return its bad files."""
    images = np.load(Path(folder) / "images.npy", mmap_mode="r+")
    sizes = np.load(Path(folder) / "sizes.npy", mmap_mode="r+")
    failures = []
    for i, path in enumerate(paths, start):
        try:
            img, (h, w) = _decode(path, side, draft)
        except BadImageError as exc:
            failures.append((path, str(exc)))
            continue
        sizes[i] = (h, w)
        images[i] = img if img.shape == (side, side) else cv2.resize(
            img, (side, side), interpolation=cv2.INTER_AREA)  # area: no aliasing when shrinking
    images.flush()
    sizes.flush()
    return failures


def _decode(path: str, side: int, draft: bool) -> tuple[np.ndarray, tuple[int, int]]:
    """One image for the cache, and its original (h, w).

    A JPEG at least twice the cached side is read with `max_side` chosen so that its
    shorter side stays >= `side`: PIL then decodes it at 1/2..1/8 scale (draft mode).
    Only JPEG decoders can scale, so other formats are read whole.
    """
    if draft and path.lower().endswith((".jpg", ".jpeg")):
        h, w = image_size(path)
        if min(h, w) >= 2 * side:
            return read_image(path, max_side=math.ceil(side * max(h, w) / min(h, w))), (h, w)
    img = read_image(path)
    return img, img.shape[:2]


class ImageCache:
    """Read-only view of a built cache; row i is manifest row i as an S×S uint8 array.

    The memmap is opened lazily in each process, so a DataLoader pickles only the folder
    name to its workers, never the array.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        meta = _read_json(self.folder / "meta.json")
        if not (self.folder / "complete").exists() or meta is None:
            raise CacheError(f"{self.folder} is not a complete image cache (interrupted "
                             f"build?); run build_cache again to finish or rebuild it")
        self.key: str = meta["key"]
        self.size: int = int(meta["cache_size"])
        self.output_size: int = int(meta["size"])
        self.margin: float = float(meta["margin"])
        self.paths: list[str] = list(meta["paths"])
        self._sizes = np.load(self.folder / "sizes.npy")
        self._images: np.ndarray | None = None
        self._pid = -1

    @classmethod
    def open(cls, folder: str | os.PathLike) -> "ImageCache":
        """Open a complete cache folder (`cache_dir/<key>`)."""
        return cls(folder)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        """Row i as a writable S×S uint8 copy (small, and detached from the memmap)."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"cache index {i} out of range for {len(self)} images")
        return np.array(self._array()[i])

    def original_size(self, i: int) -> tuple[int, int]:
        """(h, w) of the source image, to scale boxes to the cached size."""
        h, w = self._sizes[i]
        return int(h), int(w)

    def _array(self) -> np.ndarray:
        if self._images is None or self._pid != os.getpid():  # one handle per process
            self._images = np.load(self.folder / "images.npy", mmap_mode="r")
            self._pid = os.getpid()
        return self._images

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_images"], state["_pid"] = None, -1
        return state

    def __repr__(self) -> str:
        return (f"ImageCache({len(self)} images, {self.size}×{self.size} uint8, "
                f"key={self.key[:8]}, folder={str(self.folder)!r})")
