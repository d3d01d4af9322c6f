"""NIH ChestX-ray14: PNGs + `Data_Entry_2017.csv` (14 findings) → manifest DataFrame.

Two Kaggle layouts:
- full (nih-chest-xrays/data): `images_001/images/*.png` ... `images_012/`, `Data_Entry_2017.csv`
  (or the relabelled `Data_Entry_2017_v2020.csv`), `BBox_List_2017.csv`, and the official
  `train_val_list.txt` / `test_list.txt` (the official test split is kept);
- 5% sample (nih-chest-xrays/sample): `sample/images/*.png` + `sample_labels.csv`.

`Finding Labels` holds `|`-separated names or "No Finding"; each finding becomes a 0/1
column named as in `NIH_FINDINGS`, and `label` is the Pneumonia column (the binary task).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import pandas as pd

from .discover import find_sources, handle_missing_images, is_synthetic, not_found, require_columns
from .kermany import MANIFEST_COLUMNS
from .sources import register_source

__all__ = ["nih_manifest", "nih_labels", "nih_boxes", "nih_files_manifest", "NIH_FINDINGS",
           "LABEL_CSVS"]

NIH_FINDINGS = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
                "Pneumonia", "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis",
                "Pleural_Thickening", "Hernia"]
LABEL_CSVS = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv", "sample_labels.csv")
_FALLBACK_GLOBS = ("sample/images/*.png", "**/images/*.png")


def _first_file(root: Path, names: Iterable[str]) -> Path | None:
    for name in names:
        for candidate in (root / name, root / (name + ".gz")):
            if candidate.is_file():
                return candidate
    return None


def nih_labels(data_entry_csv: str | os.PathLike) -> pd.DataFrame:
    """14-finding targets indexed by `Image Index`: `patient_id`, the findings, `label`.

    Works for `Data_Entry_2017.csv`, its `_v2020` version and `sample_labels.csv` (gzipped too).
    Example:
        >>> labels = nih_labels("Data_Entry_2017.csv")            # doctest: +SKIP
        >>> labels.loc["00000001_000.png", "Cardiomegaly"]         # doctest: +SKIP
        1
    """
    raw = pd.read_csv(data_entry_csv)
    require_columns(raw, data_entry_csv, ["Image Index", "Finding Labels", "Patient ID"])
    findings = raw["Finding Labels"].astype(str)
    names = set().union(*(combo.split("|") for combo in findings.unique()))  # ~800 combos
    unknown = sorted(names - set(NIH_FINDINGS) - {"No Finding"})
    if unknown:
        raise ValueError(f"{data_entry_csv}: unknown finding name(s) {unknown} in 'Finding "
                         f"Labels'; expected '|'-separated names from {NIH_FINDINGS} or "
                         f"'No Finding'")
    padded = "|" + findings + "|"  # exact-name matching, 10x faster than str.get_dummies
    out = pd.DataFrame({f: padded.str.contains(f"|{f}|", regex=False).astype(int)
                        for f in NIH_FINDINGS})
    out.insert(0, "patient_id", raw["Patient ID"].astype(int).astype(str))
    out["label"] = out["Pneumonia"]
    out.index = pd.Index(raw["Image Index"].astype(str), name="Image Index")
    if out.index.duplicated().any():
        dup = out.index[out.index.duplicated()].unique().tolist()
        raise ValueError(f"{data_entry_csv}: {len(dup)} image name(s) listed twice, e.g. {dup[:3]}")
    return out


def nih_boxes(bbox_csv: str | os.PathLike) -> pd.DataFrame:
    """`boxes` ([x, y, w, h] list) and `box_labels` per image, indexed by `Image Index`.

    The file's header is `Image Index,Finding Label,Bbox [x,y,w,h],,,`, so the box is read
    from the four columns after `Finding Label` whatever pandas names them.
    """
    raw = pd.read_csv(bbox_csv)
    require_columns(raw, bbox_csv, ["Image Index", "Finding Label"])
    start = raw.columns.get_loc("Finding Label") + 1
    coords = raw.iloc[:, start:start + 4].apply(pd.to_numeric, errors="coerce")
    if coords.shape[1] < 4 or coords.isna().any().any():
        raise ValueError(f"{bbox_csv}: expected 4 numeric box columns (x, y, w, h) after "
                         f"'Finding Label'; columns found: {list(raw.columns)}")
    boxes: dict[str, list] = {}
    names: dict[str, list] = {}
    for image, finding, *box in zip(raw["Image Index"].astype(str), raw["Finding Label"],
                                    *(coords[c] for c in coords.columns)):
        boxes.setdefault(image, []).append([float(v) for v in box])
        names.setdefault(image, []).append(str(finding))
    index = pd.Index(list(boxes), name="Image Index")
    return pd.DataFrame({"boxes": list(boxes.values()), "box_labels": list(names.values())},
                        index=index)


def _find_images(root: Path, images_glob: str) -> dict[str, Path]:
    """{file name: path} for the PNGs; falls back to the sample layout's folders."""
    for pattern in (images_glob, *_FALLBACK_GLOBS):
        files = {p.name: p for p in sorted(root.glob(pattern)) if not p.name.startswith(".")}
        if files:
            return files
    return {}


def _finish(df: pd.DataFrame, root: Path, bbox_csv: Path | None) -> pd.DataFrame:
    """Boxes (+ the size of the boxed images), source columns, contract column order."""
    table = nih_boxes(bbox_csv) if bbox_csv else pd.DataFrame(columns=["boxes", "box_labels"])
    names = df["path"].map(os.path.basename)
    df["boxes"] = [table.at[n, "boxes"] if n in table.index else [] for n in names]
    df["box_labels"] = [table.at[n, "box_labels"] if n in table.index else [] for n in names]
    df["width"], df["height"] = 0, 0
    boxed = df.index[df["boxes"].map(len) > 0]
    if len(boxed):
        from .images import image_size  # lazy: the reader pulls in cv2/pydicom

        for i in boxed:  # ~900 of 112k images: the boxes' pixel frame, worth reading
            df.at[i, "height"], df.at[i, "width"] = image_size(df.at[i, "path"])
    df["source"], df["synthetic"] = "nih", is_synthetic(root)
    return df[MANIFEST_COLUMNS + NIH_FINDINGS + ["box_labels"]].reset_index(drop=True)


def nih_files_manifest(paths: Iterable[str | os.PathLike], labels: pd.DataFrame, *,
                       bbox_csv: str | os.PathLike | None = None) -> pd.DataFrame:
    """Manifest rows for given NIH image files, joined to `nih_labels(...)` by file name.

    For subsets and re-encodings that keep the file names (e.g. a 64×64 copy); split is "".
    A file whose name has no label row is an error.
    """
    paths = [str(p) for p in paths]
    names = pd.Series([os.path.basename(p) for p in paths])
    unlabelled = names[~names.isin(labels.index)]
    if len(unlabelled):
        raise ValueError(f"{len(unlabelled)} of {len(paths)} image(s) have no row in the "
                         f"labels CSV, e.g. {unlabelled.head(5).tolist()}: wrong Data_Entry file?")
    df = labels.loc[names].reset_index(drop=True)
    df.insert(0, "path", paths)
    df["split"] = ""
    root = Path(os.path.commonpath(paths)) if paths else Path(".")
    return _finish(df, root, Path(bbox_csv) if bbox_csv else None)


def nih_manifest(root: str | os.PathLike, *, images_glob: str = "images*/**/*.png",
                 on_bad_image: str = "error") -> pd.DataFrame:
    """Manifest of the NIH layout: one row per labelled image, plus the 14 finding columns.

    Also adds `box_labels` (the finding of each box in `boxes`).

    Args:
        root: the folder holding the labels CSV (or a folder containing it).
        images_glob: where the PNGs are, relative to `root`; the sample layout
            (`sample/images/*.png`) is found without changing it.
        on_bad_image: "error" (default) or "skip" for labels whose image is missing.
    Example:
        >>> m = nih_manifest("/kaggle/input/data")           # doctest: +SKIP
        >>> m[NIH_FINDINGS].sum().sort_values()               # doctest: +SKIP
    """
    root = Path(root).expanduser()
    if _first_file(root, LABEL_CSVS) is None:
        root = find_sources(root, max_depth=3).get("nih") or root
    labels_csv = _first_file(root, LABEL_CSVS)
    if labels_csv is None:
        raise not_found(root, "nih")
    labels = nih_labels(labels_csv)
    files = _find_images(root, images_glob)
    if not files:
        raise FileNotFoundError(f"no NIH images match {images_glob!r} (or {_FALLBACK_GLOBS}) "
                                f"under {root}: run `python -m utils.data.download nih-sample` "
                                f"or pass images_glob=")
    df = labels.reset_index()
    df["path"] = [str(files[n]) if n in files else "" for n in df["Image Index"]]
    df = handle_missing_images(df, df["path"] == "", f"{labels_csv} vs images matching "
                               f"{images_glob!r} under {root}", on_bad_image, key="Image Index")
    test_list = root / "test_list.txt"
    test_names = set(test_list.read_text().split()) if test_list.is_file() else set()
    df["split"] = ["test" if n in test_names else "" for n in df["Image Index"]]
    skipped = df.attrs.get("skipped", [])
    out = _finish(df, root, _first_file(root, ["BBox_List_2017.csv"]))
    out.attrs.update(skipped=skipped, root=str(root), labels_csv=str(labels_csv),
                     grouping="patient", grouping_note=f"'Patient ID' of {labels_csv.name}")
    return out


def _is_nih_root(folder: Path, entries: set[str]) -> bool:
    """A folder holding one of the NIH label CSVs (gzipped or not)."""
    return any(name in entries or name + ".gz" in entries for name in LABEL_CSVS)


register_source("nih", detect=_is_nih_root, manifest=nih_manifest,
                download="python -m utils.data.download nih-sample  (or: nih, 45 GB)",
                skip_dirs={"images"}, multilabel=True)
