"""Where the data is: detect the Kermany / RSNA / NIH layouts under a folder.

The `kaggle` CLI, Kaggle's `/kaggle/input/<slug>/` mounts and hand-made folders all nest the
sources differently (`chest_xray/`, `chest-xray-pneumonia/chest_xray/`, `chest_xray/chest_xray/`,
`rsna-pneumonia-detection-challenge/`, `data/`, `sample/`...). Rather than list every spelling,
`find_sources` walks a few levels breadth-first and recognises each source by its markers;
the shallowest match wins, so the Kaggle zip's doubled `chest_xray/chest_xray/` is ignored.

Also here: the checks every source parser shares (required CSV columns, labels whose image
is missing), so that their error messages read the same.
"""
from __future__ import annotations

import os
import warnings
from collections import deque
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

__all__ = ["find_sources", "resolve_data_root", "is_synthetic", "DataNotFoundError",
           "SOURCES", "DEMO_MARKER", "not_found", "require_columns", "handle_missing_images"]

SOURCES = ("kermany", "rsna", "nih")
DEMO_MARKER = "SYNTHETIC_DEMO_DATA.txt"
KAGGLE_INPUT = Path("/kaggle/input")
_REPO_ROOT = Path(__file__).resolve().parents[2]
_MAX_DEPTH = 4
_NIH_LABEL_FILES = ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv", "sample_labels.csv")
# Folders never worth descending into: image folders hold thousands of files, __MACOSX junk.
_SKIP_DIRS = {"__MACOSX", "NORMAL", "PNEUMONIA", "stage_2_train_images", "stage_2_test_images",
              "stage_2_train_images_png", "images", "cache", "demo"}
_DOWNLOAD_HINT = {"kermany": "python -m utils.data.download kermany",
                  "rsna": "python -m utils.data.download rsna",
                  "nih": "python -m utils.data.download nih-sample  (or: nih, 45 GB)"}


class DataNotFoundError(FileNotFoundError):
    """The asked-for source is not under the data root; says what was found and how to fix."""


def _kind_of(folder: Path, entries: set[str]) -> str | None:
    """Which source's layout `folder` is the root of (by its marker files), if any."""
    if "stage_2_train_labels.csv" in entries:
        return "rsna"
    if any(name in entries or name + ".gz" in entries for name in _NIH_LABEL_FILES):
        return "nih"
    for split in ("train", "val", "test"):
        if split in entries and any((folder / split / c).is_dir() for c in ("NORMAL", "PNEUMONIA")):
            return "kermany"
    return None


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
    queue = deque([(root, 0)])
    while queue and len(found) < len(SOURCES):
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
                         if e.is_dir() and e.name not in _SKIP_DIRS and not e.name.startswith(".")
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


def resolve_data_root(value: str = "", announce: bool = True) -> tuple[Path, bool]:
    """The data root to use and whether it is the SYNTHETIC demo set.

    Order: an explicit `value`, else env `CXR_DATA_ROOT`, else `/kaggle/input` (then the
    repo's `data/` folder, where `python -m utils.data.download` puts real data) when a
    source is found there, else the generated demo set (`ensure_demo()`), announced loudly.

    Args:
        value: `RunConfig.data_root`; "" means auto.
        announce: print and warn when falling back to the demo (a caller with its own
            banner, like run_all.py, passes False so the notice is said once).
    Example:
        >>> root, synthetic = resolve_data_root("")  # doctest: +SKIP
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
    from .demo import ensure_demo  # lazy: generating images needs cv2 / pydicom

    demo = Path(ensure_demo())
    looked = ", ".join(["CXR_DATA_ROOT (unset)"] + [str(p) for _, p in candidates])
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
        f"`{_DOWNLOAD_HINT.get(wanted, 'python -m utils.data.download ' + wanted)}` and point "
        f"data_root (or env CXR_DATA_ROOT) at the folder holding it.")


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
