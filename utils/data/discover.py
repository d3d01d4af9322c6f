"""Where the data is: detect the registered sources' layouts under a folder.

The `kaggle` CLI, Kaggle's `/kaggle/input/<slug>/` mounts and hand-made folders all nest the
sources differently (`chest_xray/`, `chest-xray-pneumonia/chest_xray/`, `chest_xray/chest_xray/`,
`rsna-pneumonia-detection-challenge/`, `data/`, `sample/`...). Rather than list every spelling,
`find_sources` walks a few levels breadth-first and recognises each source by its markers
(each source's `detect`, `utils.data.sources`); the shallowest match wins, so the Kaggle
zip's doubled `chest_xray/chest_xray/` is ignored.

Discovery only finds data: when there is none, `resolve_data_root` uses the fallback its
caller hands it (the notebooks and run_all.py pass `demo.ensure_demo`), so this module
imports no generator.

Also here: the checks every source parser shares (required CSV columns, labels whose image
is missing), so that their error messages read the same.
"""
from __future__ import annotations

import os
import warnings
from collections import deque
from pathlib import Path
from typing import Callable, Iterable, Sequence

import pandas as pd

from .sources import get_source, registered_sources

__all__ = ["find_sources", "resolve_data_root", "is_synthetic", "DataNotFoundError",
           "DEMO_MARKER", "not_found", "require_columns", "handle_missing_images"]

DEMO_MARKER = "SYNTHETIC_DEMO_DATA.txt"
KAGGLE_INPUT = Path("/kaggle/input")
_REPO_ROOT = Path(__file__).resolve().parents[2]
_MAX_DEPTH = 4
# Folders never worth descending into (besides each source's own `skip_dirs`): macOS junk,
# the project's caches and generated sets.
_SKIP_DIRS = {"__MACOSX", "cache", "demo"}


class DataNotFoundError(FileNotFoundError):
    """The asked-for source is not under the data root; says what was found and how to fix."""


def _kind_of(folder: Path, entries: set[str]) -> str | None:
    """Which registered source's layout `folder` is the root of (by its markers), if any."""
    return next((s.name for s in registered_sources() if s.detect(folder, entries)), None)


def find_sources(root: str | os.PathLike, max_depth: int = _MAX_DEPTH) -> dict[str, Path]:
    """Detect which sources live under `root`: {"kermany"|"rsna"|"nih": folder}.

    Each folder returned is the one its parser expects (`kermany_manifest(found["kermany"])`).

    Args:
        root: a data folder, e.g. `/kaggle/input` or where `kaggle datasets download` unzipped.
        max_depth: how many folder levels below `root` to look.
    Example:
        >>> find_sources("/kaggle/input")  # doctest: +SKIP
        {'kermany': PosixPath('/kaggle/input/chest-xray-pneumonia/chest_xray')}
    """
    root = Path(root).expanduser()
    found: dict[str, Path] = {}
    skip = _SKIP_DIRS.union(*(s.skip_dirs for s in registered_sources()))
    queue = deque([(root, 0)])
    while queue and len(found) < len(registered_sources()):
        folder, depth = queue.popleft()
        try:
            children = sorted(os.scandir(folder), key=lambda e: e.name)
        except (NotADirectoryError, FileNotFoundError, PermissionError):
            continue
        kind = _kind_of(folder, {e.name for e in children})
        if kind is not None:
            found.setdefault(kind, folder)
            continue  # a source's own subfolders hold no other source
        if depth < max_depth:
            queue.extend((Path(e.path), depth + 1) for e in children
                         if e.is_dir() and e.name not in skip and not e.name.startswith(".")
                         and not e.name.startswith("images_"))
    return dict(sorted(found.items()))


def is_synthetic(path: str | os.PathLike) -> bool:
    """True when `path` belongs to the generated demo set (marker in it, a parent or a child)."""
    path = Path(path).expanduser().resolve()
    folder = path if path.is_dir() else path.parent
    if any((p / DEMO_MARKER).is_file() for p in (folder, *folder.parents)):
        return True
    try:
        return any((c / DEMO_MARKER).is_file() for c in folder.iterdir() if c.is_dir())
    except OSError:
        return False


def _candidates(value: str) -> list[tuple[str, Path]]:
    """Where to look, in order, with the reason each place is looked at."""
    if value:
        return [("data_root", Path(value).expanduser())]
    if os.environ.get("CXR_DATA_ROOT"):
        return [("CXR_DATA_ROOT", Path(os.environ["CXR_DATA_ROOT"]).expanduser())]
    return [("Kaggle mounts", KAGGLE_INPUT), ("downloads", _REPO_ROOT / "data")]


def resolve_data_root(value: str = "", announce: bool = True,
                      fallback: Callable[[], str | os.PathLike] | None = None
                      ) -> tuple[Path, bool]:
    """The data root to use and whether it is the SYNTHETIC demo set.

    Order: an explicit `value`, else env `CXR_DATA_ROOT`, else `/kaggle/input` (then the
    repo's `data/` folder, where `python -m utils.data.download` puts real data) when a
    source is found there, else `fallback()` (the callers that run without data pass
    `utils.data.demo.ensure_demo`, which generates the demo set), announced loudly.

    Args:
        value: `RunConfig.data_root`; "" means auto.
        announce: print and warn when falling back (a caller with its own banner, like
            run_all.py, passes False so the notice is said once).
        fallback: what to use when no data is found; None: raise `DataNotFoundError`.
    Example:
        >>> from utils.data.demo import ensure_demo
        >>> root, synthetic = resolve_data_root("", fallback=ensure_demo)  # doctest: +SKIP
    """
    candidates = _candidates(value)
    if candidates[0][0] in ("data_root", "CXR_DATA_ROOT"):
        why, path = candidates[0]
        if not path.exists():
            raise DataNotFoundError(f"{why}={str(path)!r} does not exist; fix the path or "
                                    f"leave data_root='' to use Kaggle mounts or the demo data")
        return path, is_synthetic(path)
    for _, path in candidates:
        if path.is_dir() and find_sources(path):
            return path, is_synthetic(path)
    looked = ", ".join(["CXR_DATA_ROOT (unset)"] + [str(p) for _, p in candidates])
    if fallback is None:
        raise DataNotFoundError(f"no data found (looked in {looked}): download a source "
                                f"(`python -m utils.data.download kermany`), point data_root "
                                f"(or env CXR_DATA_ROOT) at it, or generate the demo set "
                                f"(utils.data.demo.ensure_demo)")
    demo = Path(fallback())
    message = (f"no Kaggle data found (looked in {looked}): using the generated SYNTHETIC "
               f"demo data in {demo}")
    if announce:
        print(message)
        warnings.warn(message, stacklevel=2)
    return demo, True


def not_found(root: Path, wanted: str) -> DataNotFoundError:
    """The error for a source that is not under `root`, naming what is there instead."""
    found = find_sources(root)
    have = ", ".join(f"{k} at {v}" for k, v in found.items()) or "no known source"
    return DataNotFoundError(
        f"dataset {wanted!r} not found under {root} (found: {have}). Get it with "
        f"`{_download_hint(wanted)}` and point "
        f"data_root (or env CXR_DATA_ROOT) at the folder holding it.")


def _download_hint(name: str) -> str:
    try:
        return get_source(name).download or f"python -m utils.data.download {name}"
    except KeyError:
        return f"python -m utils.data.download {name}"


def require_columns(df: pd.DataFrame, csv: str | os.PathLike, needed: Iterable[str]) -> None:
    """Raise naming the CSV, the missing columns and the columns found."""
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise ValueError(f"{csv}: missing required column(s) {missing}; columns found: "
                         f"{list(df.columns)}. Is this the right file (or a truncated download)?")


def handle_missing_images(df: pd.DataFrame, missing: Sequence[bool] | pd.Series, what: str,
                          on_bad_image: str = "error", key: str = "path") -> pd.DataFrame:
    """Rows whose image is missing: error (default) or drop with a warning and record them.

    With `on_bad_image="skip"` the dropped keys are kept in `df.attrs["skipped"]`, so the
    change to the numbers is visible rather than silent.
    """
    if on_bad_image not in ("error", "skip"):
        raise ValueError(f"on_bad_image={on_bad_image!r} must be 'error' or 'skip'")
    mask = pd.Series(missing, index=df.index).astype(bool)
    n = int(mask.sum())
    if n == 0:
        df.attrs.setdefault("skipped", [])
        return df
    examples = [str(v) for v in df.loc[mask, key].head(5)]
    if on_bad_image == "error":
        raise FileNotFoundError(
            f"{what}: {n} of {len(df)} labelled image(s) are missing, e.g. {examples}. "
            f"Complete the download (see `python -m utils.data.download`) or pass "
            f"on_bad_image='skip' to drop them with a warning.")
    warnings.warn(f"{what}: skipping {n} of {len(df)} labelled image(s) whose file is "
                  f"missing, e.g. {examples} (list in manifest.attrs['skipped'])", stacklevel=3)
    kept = df.loc[~mask].reset_index(drop=True)
    kept.attrs["skipped"] = [str(v) for v in df.loc[mask, key]]
    return kept
