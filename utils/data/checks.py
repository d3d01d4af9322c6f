"""Image checks over a whole manifest, before any training: bad files are refused by name.

`check_image` (in `images.py`, next to the reader) reads a file's header and last bytes;
`check_images` runs it over every manifest row in a pool of processes, in chunks. Why
processes: per file the work is a few fast system calls wrapped in tens of microseconds of
Python (on page-cached files), so threads take turns on the GIL and use about one core;
processes use every core. Why chunks: one task per file would spend more on pickling and
queueing than on the check. Small manifests are checked in this process (a pool's start-up
costs more than a few thousand checks). The reader is imported lazily, so importing this
module (and `utils.data.dataset`, which re-exports `check_images`) stays light.
"""
from __future__ import annotations

import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from typing import Sequence

import numpy as np
import pandas as pd

__all__ = ["check_images", "find_bad_images", "CHUNK_SIZE", "MIN_PARALLEL"]

CHUNK_SIZE = 1024      # files per task
MIN_PARALLEL = 4096    # fewer files than this: checked in-process
_MAX_LISTED = 10       # files named in the error message


def _check_chunk(start: int, paths: Sequence[str]) -> list[tuple[int, str]]:
    """Worker: (row, reason) for each bad file of one chunk; rows count from `start`."""
    from .images import BadImageError, check_image  # lazy: the reader pulls in cv2/pydicom

    bad = []
    for i, path in enumerate(paths, start):
        try:
            check_image(path)
        except BadImageError as exc:
            bad.append((i, str(exc)))
    return bad


def find_bad_images(paths: Sequence[str], workers: int | None = None,
                    chunk_size: int = CHUNK_SIZE, progress: bool = False) -> list[tuple[int, str]]:
    """`(index, reason)` of every file `check_image` refuses, in `paths` order.

    Args:
        paths: image files.
        workers: processes (default `os.cpu_count()`); 1, or fewer than `MIN_PARALLEL`
            files, checks in this process.
        chunk_size: files per task.
        progress: show a tqdm bar (per chunk).
    Example:
        >>> find_bad_images(["ok.png", "empty.png"])  # doctest: +SKIP
        [(1, 'empty.png: the file is empty (0 bytes), ...')]
    """
    paths = [str(p) for p in paths]
    chunks = [(s, paths[s:s + chunk_size]) for s in range(0, len(paths), chunk_size)]
    workers = min(workers or os.cpu_count() or 1, len(chunks))
    from tqdm.auto import tqdm

    bar = tqdm(total=len(paths), desc="checking images", unit="img", leave=False,
               disable=not progress)
    bad: list[tuple[int, str]] = []
    try:
        if workers <= 1 or len(paths) < MIN_PARALLEL:
            for start, chunk in chunks:
                bad += _check_chunk(start, chunk)
                bar.update(len(chunk))
            return bad
        with ProcessPoolExecutor(workers) as pool:
            futures = [pool.submit(_check_chunk, start, chunk) for start, chunk in chunks]
            try:
                for fut, (_, chunk) in zip(futures, chunks):  # in order: results stay sorted
                    bad += fut.result()
                    bar.update(len(chunk))
            except BaseException:  # Ctrl-C or a crash: do not check the rest first
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        return bad
    finally:
        bar.close()


def check_images(manifest: pd.DataFrame, on_bad_image: str = "error",
                 workers: int | None = None) -> pd.DataFrame:
    """Refuse (or, with `skip`, drop and list) unreadable images before any training.

    Skipped paths are appended to `attrs["skipped"]` and their reasons to
    `attrs["skipped_reasons"]`, so the change to the numbers is never silent.

    Args:
        manifest: rows with a `path` column.
        on_bad_image: "error" raises one `BadImageError` naming the first files; "skip"
            drops them with a warning.
        workers: processes for `find_bad_images` (default: every core).
    Example:
        >>> manifest = check_images(manifest, "skip")  # doctest: +SKIP
    """
    if on_bad_image not in ("error", "skip"):
        raise ValueError(f"on_bad_image={on_bad_image!r} must be 'error' or 'skip'")
    paths = manifest["path"].astype(str).tolist()
    quiet = len(paths) < 2000 or os.environ.get("CXR_QUIET") == "1"
    found = find_bad_images(paths, workers, progress=not quiet)
    if not found:
        return manifest
    bad = [reason for _, reason in found]
    if on_bad_image == "error":
        from .images import BadImageError

        listing = "\n  ".join(bad[:_MAX_LISTED])
        raise BadImageError(f"{len(bad)} of {len(paths)} images", f"unreadable:\n  {listing}",
                            "replace or delete these files, or pass on_bad_image='skip' "
                            "(-p on_bad_image=skip) to leave them out, listed with the results")
    mask = np.zeros(len(paths), bool)
    mask[[i for i, _ in found]] = True
    warnings.warn(f"skipping {len(bad)} unreadable image(s) of {len(paths)}, e.g. {bad[0]}",
                  stacklevel=2)
    kept = manifest.loc[~mask].reset_index(drop=True)
    kept.attrs.update(manifest.attrs)
    kept.attrs["skipped"] = list(manifest.attrs.get("skipped", [])) + \
        manifest.loc[mask, "path"].tolist()
    kept.attrs["skipped_reasons"] = bad
    return kept
