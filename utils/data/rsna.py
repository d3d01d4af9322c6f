"""RSNA Pneumonia Detection Challenge: DICOMs + a box CSV → manifest DataFrame.

Layout (Kaggle competition rsna-pneumonia-detection-challenge):
`stage_2_train_images/<patientId>.dcm`, `stage_2_train_labels.csv` (`patientId,x,y,width,
height,Target`: one row per box, one row with empty box for a negative image) and
`stage_2_detailed_class_info.csv` (`patientId,class`). Despite its name, RSNA's `patientId`
is one per *image*; the manifest has one row per image (its `image_id`) with its boxes. The
challenge's test images have no labels: there is no official test split (`assign_splits`
carves one by patient).

Patients: RSNA's images are NIH ChestX-ray14 films, and RSNA's published mapping
(`pneumonia-challenge-dataset-mappings_2018.json`, see `find_rsna_nih_mapping`) names each
image's NIH film, `<patient>_<follow-up>.png`, hence its NIH patient. With the mapping,
`patient_id` is that NIH patient (`nih:<id>`), so one person's films never straddle splits;
images the mapping does not list, or every image when the mapping is absent, keep their own
id. `attrs["grouping"]` says which (`nih_patient` or `image`), `attrs["grouping_note"]` how.

Images: the DICOMs, or the PNGs `01_preprocessing` converted them to (`dicom_to_png`) when
that conversion is complete for exactly these DICOMs; `attrs["images"]` says which.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pandas as pd

from .discover import find_sources, handle_missing_images, is_synthetic, not_found, require_columns
from .kermany import MANIFEST_COLUMNS
from .sources import register_source

__all__ = ["rsna_manifest", "read_rsna_labels", "read_rsna_class_info", "LABELS_CSV",
           "MAPPING_NAME", "MAPPING_URL", "find_rsna_nih_mapping", "load_rsna_nih_mapping",
           "nih_patient_of", "png_dir", "PNG_DIR"]

LABELS_CSV = "stage_2_train_labels.csv"
CLASS_INFO_CSVS = ("stage_2_detailed_class_info.csv", "stage_2_detailed_class_info_partial.csv")
DICOM_DIR = "stage_2_train_images"
PNG_DIR = "stage_2_train_images_png"  # where 01_preprocessing converts them, when writable
MAPPING_NAME = "pneumonia-challenge-dataset-mappings_2018.json"
MAPPING_URL = ("https://www.rsna.org/artificial-intelligence/ai-image-challenge/"
               "rsna-pneumonia-detection-challenge-2018")
_MAPPING_KEYS = ("subset_img_id", "img_id")
_BOX_COLUMNS = ["x", "y", "width", "height"]
_IMAGE_SUFFIXES = (".dcm", ".png", ".jpg", ".jpeg")
_REPO_ROOT = Path(__file__).resolve().parents[2]


# --- RSNA's mapping to NIH ---------------------------------------------------------------

def find_rsna_nih_mapping(root: str | os.PathLike) -> Path | None:
    """The mapping JSON in the data root or a folder just below it (`rsna-pneumonia-detection-
    challenge/`, `nih/`, a Kaggle dataset of one's own), else where RSNA or NIH were found.

    Example:
        >>> find_rsna_nih_mapping("/kaggle/input")   # doctest: +SKIP
    """
    root = Path(root).expanduser()
    near = [root / MAPPING_NAME, *sorted(root.glob(f"*/{MAPPING_NAME}"))]
    found = find_sources(root) if not any(p.is_file() for p in near) else {}
    deep = [found[k] / MAPPING_NAME for k in ("rsna", "nih") if k in found]
    return next((p for p in near + deep if p.is_file()), None)


def load_rsna_nih_mapping(path: str | os.PathLike) -> pd.DataFrame:
    """`rsna_patient_id`, `nih_image` (the NIH `Image Index`, `.png` added if absent)."""
    try:
        raw = json.loads(Path(path).read_text())
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); download {MAPPING_NAME} again "
                         f"from {MAPPING_URL}") from exc
    if not isinstance(raw, list) or not all(isinstance(r, dict) for r in raw):
        raise ValueError(f"{path}: expected a JSON list of objects with keys "
                         f"{list(_MAPPING_KEYS)} (RSNA's {MAPPING_NAME}), got {type(raw).__name__}")
    missing = sorted({k for r in raw for k in _MAPPING_KEYS if k not in r})
    if missing:
        raise ValueError(f"{path}: entries lack key(s) {missing}; expected "
                         f"{list(_MAPPING_KEYS)} as in RSNA's {MAPPING_NAME}")
    images = [os.path.basename(str(r["img_id"])) for r in raw]
    return pd.DataFrame({"rsna_patient_id": [str(r["subset_img_id"]) for r in raw],
                         "nih_image": [n if n.endswith(".png") else n + ".png" for n in images]})


def nih_patient_of(image_name: str) -> str:
    """The NIH patient of an NIH file name `<patient>_<follow-up>.png`, as `nih_labels`
    writes patient ids (`00000123_004.png` → `"123"`); "" for other names."""
    prefix = os.path.basename(str(image_name)).split("_")[0]
    return str(int(prefix)) if prefix.isdigit() else ""


def _group_by_nih_patient(df: pd.DataFrame, root: Path, mapping) -> pd.DataFrame:
    """`patient_id` = the NIH patient behind each mapped image; attrs say what was done."""
    path = find_rsna_nih_mapping(root.parent) if mapping == "auto" else mapping
    if path is None:
        df.attrs.update(grouping="image", grouping_note=(
            f"no {MAPPING_NAME} beside {root} or in its parent folder: each RSNA image is "
            f"its own patient (RSNA's patientId is one per image), so films of one NIH "
            f"patient may fall in different splits. Fix: put the mapping from {MAPPING_URL} "
            f"in the data root"))
        return df
    table = load_rsna_nih_mapping(path).drop_duplicates("rsna_patient_id")
    nih = df["image_id"].map(dict(zip(table["rsna_patient_id"], table["nih_image"])))
    patient = nih.map(lambda n: nih_patient_of(n) if isinstance(n, str) else "")
    mapped = patient != ""
    df["patient_id"] = ("nih:" + patient).where(mapped, df["image_id"])
    df.attrs.update(grouping="nih_patient", mapping=str(path), grouping_note=(
        f"grouped by NIH patient via {path}: {int(mapped.sum())} of {len(df)} images mapped "
        f"to {patient[mapped].nunique()} NIH patients; {int((~mapped).sum())} unmapped images "
        f"are their own patient"))
    return df


# --- the images: DICOMs, or 01_preprocessing's PNGs ----------------------------------------

def png_dir(root: str | os.PathLike) -> Path:
    """Where `01_preprocessing` writes the PNG copies of `root`'s DICOMs: beside them, or,
    when `root` is read-only (Kaggle's /kaggle/input), the repository's `data/rsna_png/`."""
    root = Path(root)
    return root / PNG_DIR if os.access(root, os.W_OK) else _REPO_ROOT / "data" / "rsna_png"


def _pick_images(root: Path) -> tuple[Path, str]:
    """The PNG folder when its conversion of `root`'s DICOMs is complete, else the DICOMs;
    with a sentence saying which and why."""
    from .convert import png_conversion_status  # lazy: the reader pulls in cv2/pydicom

    dicoms = root / DICOM_DIR
    for candidate in dict.fromkeys([root / PNG_DIR, png_dir(root)]):
        complete, why = png_conversion_status(dicoms, candidate)
        if complete:
            return candidate, f"PNGs converted by 01_preprocessing in {candidate}"
        if candidate.exists():
            return dicoms, f"DICOMs in {dicoms} (the PNGs in {candidate} are not used: {why})"
    return dicoms, f"DICOMs in {dicoms} (no PNG conversion; 01_preprocessing makes one)"


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
        "patient_id": patients.index.astype(str),  # one per image: see the module docstring
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
        h, w = image_size(dicoms.get(df.at[i, "image_id"], df.at[i, "path"]))
        df.at[i, "width"], df.at[i, "height"] = int(w), int(h)
    return df


def rsna_manifest(root: str | os.PathLike, image_dir: str | os.PathLike | None = None, *,
                  on_bad_image: str = "error", mapping: str | os.PathLike | None = "auto",
                  verbose: bool = True) -> pd.DataFrame:
    """Manifest of the RSNA layout: one row per image (columns per ARCHITECTURE.md).

    Adds `image_id` (RSNA's patientId, the file stem) and `class_info` when the detailed
    class CSV is present ("" otherwise).

    Args:
        root: the competition folder (or a folder containing it).
        image_dir: where the images are. Default: `01_preprocessing`'s PNGs when their
            conversion of the DICOMs is complete (`png_dir`), else `stage_2_train_images`.
            Relative paths are taken from `root`.
        on_bad_image: "error" (default) or "skip" for labels whose image is missing.
        mapping: RSNA's NIH mapping JSON for patient grouping; "auto" looks in `root` and
            its parent folder (`find_rsna_nih_mapping(root.parent)`); None: group by image.
        verbose: print which images are read and how patients are grouped.
    Example:
        >>> m = rsna_manifest("/kaggle/input/rsna-pneumonia-detection-challenge")  # doctest: +SKIP
    """
    root = Path(root).expanduser()
    if not (root / LABELS_CSV).is_file():
        root = find_sources(root, max_depth=3).get("rsna") or root
        if not (root / LABELS_CSV).is_file():
            raise not_found(root, "rsna")
    df = read_rsna_labels(root / LABELS_CSV)
    df["image_id"] = df["patient_id"]
    if image_dir is None:
        folder, images_note = _pick_images(root)
    else:
        folder = root / image_dir
        images_note = f"images in {folder} (image_dir given)"
    if not folder.is_dir():
        raise FileNotFoundError(f"RSNA image folder {folder} does not exist ({LABELS_CSV} is "
                                f"there, the images are not): run `python -m utils.data.download "
                                f"rsna`, or pass image_dir= where the images are")
    images = _index_images(folder)
    df["path"] = [str(images[p]) if p in images else "" for p in df["image_id"]]
    df = handle_missing_images(df, df["path"] == "", f"{root / LABELS_CSV} vs images in "
                               f"{folder}", on_bad_image, key="image_id")
    df = _box_frames(df, _index_images(root / DICOM_DIR))
    info_csv = next((root / c for c in CLASS_INFO_CSVS if (root / c).is_file()), None)
    info = read_rsna_class_info(info_csv) if info_csv else pd.Series(dtype=str)
    df["class_info"] = df["image_id"].map(info).fillna("").astype(str)
    df["split"], df["source"], df["synthetic"] = "", "rsna", is_synthetic(root)
    df = _group_by_nih_patient(df, root, mapping) if mapping is not None else _no_grouping(df)
    out = df[MANIFEST_COLUMNS + ["class_info", "image_id"]].reset_index(drop=True)
    out.attrs.update(df.attrs, root=str(root), image_dir=str(folder), images=images_note)
    if verbose:
        print(f"RSNA: reading {images_note}")
        if out.attrs["grouping"] == "nih_patient":
            print(f"RSNA: {out.attrs['grouping_note']}")
    if out.attrs["grouping"] == "image" and mapping is not None:
        warnings.warn(f"RSNA splits by image, not by patient: {out.attrs['grouping_note']}",
                      stacklevel=2)
    return out


def _no_grouping(df: pd.DataFrame) -> pd.DataFrame:
    df.attrs.update(grouping="image", grouping_note="grouped by image (mapping=None)")
    return df


def _is_rsna_root(folder: Path, entries: set[str]) -> bool:
    return LABELS_CSV in entries


register_source("rsna", detect=_is_rsna_root, manifest=rsna_manifest,
                download="python -m utils.data.download rsna",
                skip_dirs={DICOM_DIR, "stage_2_test_images", PNG_DIR})
