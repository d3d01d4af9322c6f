"""RSNA Pneumonia Detection Challenge: DICOMs + a box CSV → manifest DataFrame.

Layout (Kaggle competition rsna-pneumonia-detection-challenge):
`stage_2_train_images/<patientId>.dcm`, `stage_2_train_labels.csv` (`patientId,x,y,width,
height,Target`: one row per box, one row with empty box for a negative patient) and
`stage_2_detailed_class_info.csv` (`patientId,class`). One image per patient, so the manifest
has one row per patient with the list of its boxes. The challenge's test images have no
labels: there is no official test split (`assign_splits` carves one by patient).
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from .discover import find_sources, handle_missing_images, is_synthetic, not_found, require_columns
from .kermany import MANIFEST_COLUMNS

__all__ = ["rsna_manifest", "read_rsna_labels", "read_rsna_class_info", "LABELS_CSV"]

LABELS_CSV = "stage_2_train_labels.csv"
CLASS_INFO_CSVS = ("stage_2_detailed_class_info.csv", "stage_2_detailed_class_info_partial.csv")
DICOM_DIR = "stage_2_train_images"
_BOX_COLUMNS = ["x", "y", "width", "height"]
_IMAGE_SUFFIXES = (".dcm", ".png", ".jpg", ".jpeg")


def read_rsna_labels(csv: str | os.PathLike) -> pd.DataFrame:
    """One row per patient: `patient_id`, `label` (0/1), `boxes` (list of [x, y, w, h]).

    Needs no images, so the labels can be checked (and split) on their own.
    Example:
        >>> labels = read_rsna_labels("stage_2_train_labels.csv")  # doctest: +SKIP
        >>> len(labels), labels.label.sum()                         # doctest: +SKIP
        (26684, 6012)
    """
    raw = pd.read_csv(csv)
    require_columns(raw, csv, ["patientId", *_BOX_COLUMNS, "Target"])
    has_box = raw[_BOX_COLUMNS].notna().all(axis=1)
    bad = raw[(raw["Target"] == 1) != has_box]
    if len(bad):
        raise ValueError(f"{csv}: {len(bad)} row(s) where Target disagrees with the box "
                         f"(Target=1 needs x,y,width,height; Target=0 none), e.g. patients "
                         f"{bad['patientId'].head(3).tolist()}")
    boxes: dict[str, list] = {}
    for pid, *box in raw.loc[has_box, ["patientId", *_BOX_COLUMNS]].itertuples(index=False):
        boxes.setdefault(pid, []).append([float(v) for v in box])
    patients = raw.groupby("patientId", sort=True)["Target"].max()
    return pd.DataFrame({
        "patient_id": patients.index.astype(str),
        "label": patients.values.astype(int),
        "boxes": [boxes.get(p, []) for p in patients.index],
    })


def read_rsna_class_info(csv: str | os.PathLike) -> pd.Series:
    """`class` per patient ("Lung Opacity", "Normal", "No Lung Opacity / Not Normal")."""
    raw = pd.read_csv(csv)
    require_columns(raw, csv, ["patientId", "class"])
    return raw.drop_duplicates("patientId").set_index("patientId")["class"].astype(str)


def _index_images(folder: Path) -> dict[str, Path]:
    """{patientId: file} for the image files in `folder` (one listing, not one stat per row)."""
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir())
            if p.suffix.lower() in _IMAGE_SUFFIXES and not p.name.startswith(".")}


def _box_frames(df: pd.DataFrame, dicoms: dict[str, Path]) -> pd.DataFrame:
    """width/height for rows with boxes: the size of the DICOM the boxes were drawn on.

    Converted PNGs may be resized, so the DICOM is measured when it is there; otherwise the
    file itself is. Rows without boxes keep 0 (reading 26k headers is not worth it).
    """
    df["width"], df["height"] = 0, 0
    boxed = df.index[df["boxes"].map(len) > 0]
    if len(boxed) == 0:
        return df
    from .images import image_size  # lazy: the reader pulls in cv2/pydicom

    for i in boxed:
        h, w = image_size(dicoms.get(df.at[i, "patient_id"], df.at[i, "path"]))
        df.at[i, "width"], df.at[i, "height"] = int(w), int(h)
    return df


def rsna_manifest(root: str | os.PathLike, image_dir: str | os.PathLike | None = None, *,
                  on_bad_image: str = "error") -> pd.DataFrame:
    """Manifest of the RSNA layout: one row per patient (columns per ARCHITECTURE.md).

    Adds `class_info` when the detailed class CSV is present ("" otherwise).

    Args:
        root: the competition folder (or a folder containing it).
        image_dir: where the images are (default `root/stage_2_train_images`); pass e.g.
            `stage_2_train_images_png` for the PNGs the preprocessing notebook writes.
            Relative paths are taken from `root`.
        on_bad_image: "error" (default) or "skip" for labels whose image is missing.
    Example:
        >>> m = rsna_manifest("/kaggle/input/rsna-pneumonia-detection-challenge")  # doctest: +SKIP
    """
    root = Path(root).expanduser()
    if not (root / LABELS_CSV).is_file():
        root = find_sources(root, max_depth=3).get("rsna") or root
        if not (root / LABELS_CSV).is_file():
            raise not_found(root, "rsna")
    df = read_rsna_labels(root / LABELS_CSV)
    folder = root / (image_dir if image_dir is not None else DICOM_DIR)
    if not folder.is_dir():
        raise FileNotFoundError(f"RSNA image folder {folder} does not exist ({LABELS_CSV} is "
                                f"there, the images are not): run `python -m utils.data.download "
                                f"rsna`, or pass image_dir= where the images are")
    images = _index_images(folder)
    df["path"] = [str(images[p]) if p in images else "" for p in df["patient_id"]]
    df = handle_missing_images(df, df["path"] == "", f"{root / LABELS_CSV} vs images in "
                               f"{folder}", on_bad_image, key="patient_id")
    df = _box_frames(df, _index_images(root / DICOM_DIR))
    info_csv = next((root / c for c in CLASS_INFO_CSVS if (root / c).is_file()), None)
    info = read_rsna_class_info(info_csv) if info_csv else pd.Series(dtype=str)
    df["class_info"] = df["patient_id"].map(info).fillna("").astype(str)
    df["split"], df["source"], df["synthetic"] = "", "rsna", is_synthetic(root)
    out = df[MANIFEST_COLUMNS + ["class_info"]].reset_index(drop=True)
    out.attrs.update(df.attrs, root=str(root), image_dir=str(folder))
    return out
