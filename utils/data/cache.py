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
    meta.json      key, version, size, margin, draft, cache_size, count, paths
    progress.json  key and chunk size of the build (written once, when the folder is made)
    done.log       ids of the chunks whose pixels are on disk, one per line, appended
    complete       written last; a folder without it is a partial build

Resume and crash safety: workers write their chunk's rows into the memmaps and return; the
parent fsyncs both arrays every few seconds (`SYNC_SECONDS`) and only then appends the ids
of the chunks finished before that sync to `done.log`. A killed build therefore loses at
most a few seconds of work and never lists a chunk whose pixels might be missing, and a
resume reads a torn last line as "not done". Why not a JSON list rewritten per chunk, or a
flush per chunk (as before): at 112,120 images (1,752 chunks) the atomic rewrites alone took
34 s and the two msyncs ~30 ms a chunk on the 2-core VM, more than decoding 64 small PNGs.
Two processes of one machine asking for the same cache at once (e.g. DDP ranks) take turns
on a lock file in the temp folder (`cache_state.build_lock`): the second waits, then opens
the first one's complete cache.
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

from ..fileio import atomic_write_text
from ..fileio import read_json
from .cache_state import DoneLog, build_lock, prepare
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
    if not force and (folder / "complete").exists():
        return ImageCache.open(folder)
    settings = {"key": key, "version": CACHE_VERSION, "size": size, "margin": margin,
                "cache_size": cache_size, "draft": draft, "count": len(paths)}
    with build_lock(folder):
        if force and folder.exists():
            shutil.rmtree(folder)
        if not (folder / "complete").exists():  # else another process built it meanwhile
            _build(folder, paths, settings, chunk_size, workers or os.cpu_count() or 1,
                   progress)
    return ImageCache.open(folder)


def _build(folder: Path, paths: list[str], settings: dict, chunk_size: int, workers: int,
           progress: bool) -> None:
    """Decode the chunks not done yet; write `complete` only when every image is in."""
    done, chunk_size = prepare(folder, settings, paths, chunk_size)
    chunks = [(c, c * chunk_size, paths[c * chunk_size:(c + 1) * chunk_size])
              for c in range(-(-len(paths) // chunk_size)) if c not in done]
    failures = _run_chunks(folder, chunks, done, settings, workers, progress, len(paths))
    if failures:
        shutil.rmtree(folder)  # its key names these exact files: it could never be reused
        listed = "\n".join("  " + (msg if p in msg else f"{p}: {msg}")
                           for p, msg in failures[:_MAX_LISTED])
        raise CacheError(f"{len(failures)} of {len(paths)} images could not be read, so the "
                         f"cache {folder} was not written:\n{listed}\nFix or remove these "
                         f"files (and rebuild the manifest), then build the cache again.")
    atomic_write_text(folder / "complete", settings["key"])  # last: only now is it trusted


def _paths_of(manifest) -> list[str]:
    if hasattr(manifest, "columns"):
        if "path" not in manifest.columns:
            raise CacheError(f"the manifest has no 'path' column (columns: "
                             f"{list(manifest.columns)})")
        return [str(p) for p in manifest["path"]]
    return [str(p) for p in manifest]


def _run_chunks(folder: Path, chunks: list, done: set[int], settings: dict, workers: int,
                progress: bool, total: int) -> list[tuple[str, str]]:
    """Decode the pending chunks (in a process pool when workers > 1); log the done ones."""
    failures: list[tuple[str, str]] = []
    side, draft = settings["cache_size"], settings["draft"]
    bar = tqdm(total=total, initial=total - sum(len(c[2]) for c in chunks),
               desc=f"caching {side}px", unit="img", disable=not progress)
    done_log = DoneLog(folder, done)

    def record(chunk_id: int, n_images: int, chunk_failures: list) -> None:
        failures.extend(chunk_failures)
        if not chunk_failures:  # a chunk with holes is never marked done
            done_log.add(chunk_id)
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
        if not failures:  # a build with bad files is deleted: nothing to keep
            done_log.commit()  # what did finish stays done, even after Ctrl-C
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
    return failures  # no flush: the parent fsyncs the files in batches (`cache_state.DoneLog`)


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

    The memmap is opened lazily in each process, and the file list stays in `meta.json`
    (read again by `paths`), so a DataLoader pickles a folder name and an N×2 int32 array to
    its workers, never the pixels nor 100k Python strings whose reference counts would
    copy-on-write the pages that hold them into every worker.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        meta = read_json(self.folder / "meta.json")
        if not (self.folder / "complete").exists() or meta is None:
            raise CacheError(f"{self.folder} is not a complete image cache (interrupted "
                             f"build?); run build_cache again to finish or rebuild it")
        self.key: str = meta["key"]
        self.size: int = int(meta["cache_size"])
        self.output_size: int = int(meta["size"])
        self.margin: float = float(meta["margin"])
        self._count = len(meta["paths"])
        self._sizes = np.load(self.folder / "sizes.npy")
        self._images: np.ndarray | None = None
        self._pid = -1

    @classmethod
    def open(cls, folder: str | os.PathLike) -> "ImageCache":
        """Open a complete cache folder (`cache_dir/<key>`)."""
        return cls(folder)

    @property
    def paths(self) -> list[str]:
        """The source file of each row, in order (read from `meta.json` on each call)."""
        return list(read_json(self.folder / "meta.json")["paths"])

    def __len__(self) -> int:
        return self._count

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
