"""Kermany "Chest X-Ray Images (Pneumonia)": a folder layout → manifest DataFrame.

Layout (Kaggle paultimothymooney/chest-xray-pneumonia): `chest_xray/{train,val,test}/
{NORMAL,PNEUMONIA}/*.jpeg`. The Kaggle zip also holds a doubled `chest_xray/chest_xray/` and a
`__MACOSX/` folder: both are ignored (the shallowest copy is used). A root holding only
`train/{NORMAL,PNEUMONIA}` (e.g. the shared test data) is accepted too.

Splits: the official `test` is kept; official train + val get split "" because the official
val has only 16 images: `assign_splits` re-splits them by patient.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from .discover import find_sources, handle_missing_images, is_synthetic, not_found, require_columns
from .sources import register_source

__all__ = ["kermany_manifest", "kermany_patient_id", "PATIENT_PATTERNS", "MANIFEST_COLUMNS"]

MANIFEST_COLUMNS = ["path", "patient_id", "split", "label", "boxes", "width", "height",
                    "source", "synthetic"]
CLASSES = {"NORMAL": 0, "PNEUMONIA": 1}
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}
# The patient is encoded in the file name; these are all the forms of the Kermany release:
#   person123_bacteria_456.jpeg, person447_virus_921_1.jpeg  → person123 / person447
#   IM-0123-0001.jpeg, IM-0429-0001-0002.jpeg                → IM-0123 / IM-0429
#   NORMAL2-IM-0123-0001.jpeg                                → NORMAL2-IM-0123
# (NORMAL2-IM-0123 and IM-0123 are different patients: the NORMAL2 prefix is another series.)
PATIENT_PATTERNS = (
    re.compile(r"^(?P<patient>person\d+)_(?:bacteria|virus)_\d+(?:_\d+)*$", re.IGNORECASE),
    re.compile(r"^(?P<patient>(?:NORMAL\d+-)?IM-\d+)(?:-\d+)+$", re.IGNORECASE),
)


def kermany_patient_id(filename: str) -> str | None:
    """Patient id parsed from a Kermany file name, or None when no pattern matches.

    Example:
        >>> kermany_patient_id("person123_bacteria_456.jpeg")
        'person123'
        >>> kermany_patient_id("NORMAL2-IM-0123-0001.jpeg")
        'NORMAL2-IM-0123'
    """
    stem = Path(filename).stem
    for pattern in PATIENT_PATTERNS:
        match = pattern.match(stem)
        if match:
            return match.group("patient")
    return None


def _base(root: Path) -> Path:
    """The folder holding the split folders (root itself, chest_xray/, ... see discover)."""
    found = find_sources(root, max_depth=3).get("kermany")
    if found is None:
        raise not_found(root, "kermany")
    return found


def _scan(base: Path) -> list[dict]:
    """One record per image file; each present split folder must hold both non-empty classes."""
    records = []
    for split_dir in ("train", "val", "test"):
        if not (base / split_dir).is_dir():
            continue
        for cls, label in CLASSES.items():
            folder = base / split_dir / cls
            if not folder.is_dir():
                raise FileNotFoundError(f"{folder} is missing: a Kermany split folder needs "
                                        f"both NORMAL/ and PNEUMONIA/ (re-extract the download)")
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
                           and not p.name.startswith("."))
            if not files:
                raise FileNotFoundError(f"{folder} holds no images (.jpeg/.jpg/.png): an "
                                        f"interrupted download? Re-extract it.")
            split = "test" if split_dir == "test" else ""
            records += [{"path": str(p), "split": split, "label": label} for p in files]
    return records


def _patients(paths: pd.Series) -> pd.Series:
    """Patient ids for all paths; an unparseable name is an error listing examples."""
    ids = paths.map(lambda p: kermany_patient_id(os.path.basename(p)))
    bad = paths[ids.isna()]
    if len(bad):
        examples = [os.path.basename(p) for p in bad.head(5)]
        raise ValueError(f"{len(bad)} Kermany file name(s) match no patient pattern, e.g. "
                         f"{examples} (in {os.path.dirname(bad.iloc[0])}); expected names like "
                         f"person123_bacteria_456.jpeg, IM-0123-0001.jpeg or "
                         f"NORMAL2-IM-0123-0001.jpeg (see PATIENT_PATTERNS)")
    return ids.astype(str)


def _attach_boxes(df: pd.DataFrame, base: Path, on_bad_image: str) -> pd.DataFrame:
    """Boxes from `boxes.csv` (path relative to the base, x, y, w, h): demo data only."""
    csv = base / "boxes.csv"
    df["boxes"] = [[] for _ in range(len(df))]
    if not csv.is_file():
        return df
    table = pd.read_csv(csv)
    require_columns(table, csv, ["path", "x", "y", "w", "h"])
    table["path"] = [str(base / p) for p in table["path"]]
    table = handle_missing_images(table, ~table["path"].isin(set(df["path"])),
                                  f"{csv} (boxes)", on_bad_image)
    boxes: dict[str, list] = {}
    for row in table.itertuples(index=False):
        boxes.setdefault(row.path, []).append([float(row.x), float(row.y), float(row.w),
                                               float(row.h)])
    df["boxes"] = [boxes.get(p, []) for p in df["path"]]
    df.attrs["skipped"] = table.attrs.get("skipped", [])
    return df


def _box_frames(df: pd.DataFrame) -> pd.DataFrame:
    """width/height of images with boxes (the boxes' pixel frame); 0 elsewhere (not read)."""
    df["width"], df["height"] = 0, 0
    boxed = df.index[df["boxes"].map(len) > 0]
    if len(boxed) == 0:
        return df
    from .images import image_size  # lazy: the reader pulls in cv2/pydicom

    for i in boxed:
        h, w = image_size(df.at[i, "path"])
        df.at[i, "width"], df.at[i, "height"] = int(w), int(h)
    return df


def kermany_manifest(root: str | os.PathLike, *, on_bad_image: str = "error") -> pd.DataFrame:
    """Manifest of the Kermany folder layout (one row per image; columns per ARCHITECTURE.md).

    Args:
        root: `chest_xray/`, a folder containing it (as Kaggle unzips it), or a folder with
            just `train/{NORMAL,PNEUMONIA}`.
        on_bad_image: "error" or "skip" for `boxes.csv` rows whose image is missing.
    Example:
        >>> m = kermany_manifest("/kaggle/input/chest-xray-pneumonia")  # doctest: +SKIP
        >>> m.groupby("split").label.value_counts()                      # doctest: +SKIP
    """
    root = Path(root).expanduser()
    base = _base(root)
    df = pd.DataFrame(_scan(base))
    df["patient_id"] = _patients(df["path"])
    df = _attach_boxes(df, base, on_bad_image)
    df = _box_frames(df)
    df["source"] = "kermany"
    df["synthetic"] = is_synthetic(base)
    out = df[MANIFEST_COLUMNS].reset_index(drop=True)
    out.attrs.update(df.attrs, root=str(base), grouping="patient",
                     grouping_note="patient parsed from the file name (PATIENT_PATTERNS)")
    out.attrs.setdefault("skipped", [])
    return out


def _is_kermany_root(folder: Path, entries: set[str]) -> bool:
    """A folder holding a split folder (`train`/`val`/`test`) with NORMAL/ or PNEUMONIA/."""
    return any(split in entries and any((folder / split / c).is_dir() for c in CLASSES)
               for split in ("train", "val", "test"))


register_source("kermany", detect=_is_kermany_root, manifest=kermany_manifest,
                download="python -m utils.data.download kermany", skip_dirs=set(CLASSES))
