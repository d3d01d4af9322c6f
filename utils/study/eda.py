"""Tables and image samples for the EDA and preprocessing notebooks (no plotting here).

Everything works from a source's manifest (docs/ARCHITECTURE.md, "Data contracts"): EDA,
like the splits and the cache, reads the manifest and never walks the folders again.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..data.images import image_size, read_image
from ..data.nih import NIH_FINDINGS

__all__ = ["load_source", "split_summary", "image_sizes", "sample_images", "box_table",
           "finding_counts", "dicom_before_after", "convert_rsna", "prepare_caches",
           "augmentation_examples", "NIH_FINDINGS"]


def load_source(name: str, sources: dict[str, Path]) -> pd.DataFrame:
    """The manifest of one source, or an empty frame (with a note) when it is not present."""
    from ..data.sources import build_manifest

    if name not in sources:
        print(f"{name}: not found under the data root; this section is empty.")
        return pd.DataFrame(columns=["path", "patient_id", "split", "label", "boxes"])
    return build_manifest(name, sources[name])


def split_summary(manifest: pd.DataFrame) -> pd.DataFrame:
    """Images, patients and positive rate per split: why splits must be by patient."""
    if manifest.empty:
        return pd.DataFrame()
    split = manifest["split"].replace("", "unsplit")
    table = manifest.assign(split=split).groupby("split").agg(
        images=("path", "size"), patients=("patient_id", "nunique"),
        positives=("label", "sum"))
    table["images_per_patient"] = (table["images"] / table["patients"]).round(2)
    table["positive_rate"] = (table["positives"] / table["images"]).round(3)
    return table


def image_sizes(manifest: pd.DataFrame, n: int = 200, seed: int = 0) -> pd.DataFrame:
    """Header-read (height, width) of a random sample of images, with their label."""
    if manifest.empty:
        return pd.DataFrame(columns=["height", "width", "label"])
    sample = manifest.sample(min(n, len(manifest)), random_state=seed)
    sizes = [image_size(p) for p in sample["path"]]
    return pd.DataFrame({"height": [h for h, _ in sizes], "width": [w for _, w in sizes],
                         "label": sample["label"].to_numpy()})


def sample_images(manifest: pd.DataFrame, per_class: int = 4, seed: int = 0,
                  with_boxes: bool = False) -> tuple[list[np.ndarray], list[str], list[list]]:
    """A few images per class (positives with boxes first when asked), titles and boxes."""
    images, titles, boxes = [], [], []
    if manifest.empty:
        return images, titles, boxes
    for label, group in manifest.groupby("label"):
        if with_boxes and label == 1:
            with_box = group[group["boxes"].map(len) > 0]
            group = with_box if len(with_box) else group
        for _, row in group.sample(min(per_class, len(group)), random_state=seed).iterrows():
            images.append(read_image(row["path"]))
            titles.append(f"{'pneumonia' if label else 'normal'} · {str(row['patient_id'])[:12]}")
            boxes.append(list(row["boxes"]))
    return images, titles, boxes


def box_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per box, with size and centre relative to the image (for box statistics)."""
    rows = []
    for _, row in manifest.iterrows():
        h, w = (row.get("height") or 0), (row.get("width") or 0)
        if not (h and w) and len(row["boxes"]):
            h, w = image_size(row["path"])
        for x, y, bw, bh in row["boxes"]:
            rows.append({"patient_id": row["patient_id"], "x": x, "y": y, "w": bw, "h": bh,
                         "cx": (x + bw / 2) / w, "cy": (y + bh / 2) / h,
                         "area_fraction": bw * bh / (w * h)})
    return pd.DataFrame(rows, columns=["patient_id", "x", "y", "w", "h", "cx", "cy",
                                       "area_fraction"])


def finding_counts(manifest: pd.DataFrame) -> pd.DataFrame:
    """Images and patients per NIH finding, most frequent first."""
    present = [f for f in NIH_FINDINGS if f in manifest.columns]
    if not present:
        return pd.DataFrame(columns=["images", "patients"])
    counts = {f: (int(manifest[f].sum()), manifest.loc[manifest[f] == 1, "patient_id"].nunique())
              for f in present}
    table = pd.DataFrame(counts, index=["images", "patients"]).T
    return table.sort_values("images", ascending=False)


def dicom_before_after(sources: dict[str, Path], n: int = 4) -> dict[str, list]:
    """Raw stored pixels next to the reader's output for a few RSNA DICOMs.

    Picks MONOCHROME1 files first when present, since that is where a naive reader fails.
    """
    import pydicom

    images: list[np.ndarray] = []
    titles: list[str] = []
    if "rsna" not in sources:
        return {"images": images, "titles": titles}
    files = sorted(Path(sources["rsna"]).glob("stage_2_train_images/*.dcm"))
    headers = [(f, pydicom.dcmread(f, stop_before_pixels=True).PhotometricInterpretation)
               for f in files[: 20 * n]]
    headers.sort(key=lambda fh: fh[1] != "MONOCHROME1")
    for path, photometric in headers[:n]:
        raw = pydicom.dcmread(path).pixel_array.astype(np.float32)
        raw = (255 * (raw - raw.min()) / max(float(np.ptp(raw)), 1.0)).astype(np.uint8)
        images += [raw, read_image(path)]
        titles += [f"stored pixels ({photometric})", "read_image (bright = dense)"]
    return {"images": images, "titles": titles}


def convert_rsna(sources: dict[str, Path], dst_dir: str | Path | None = None) -> pd.DataFrame:
    """Convert RSNA DICOMs to PNGs, resumably: into `dst_dir`, else where the RSNA manifest
    looks for them (`rsna.png_dir`: beside the DICOMs, `stage_2_train_images_png/`, or, on a
    read-only mount such as Kaggle's /kaggle/input, the repo's `data/rsna_png/`). Once every
    file converted, later steps' RSNA manifests read these PNGs."""
    if "rsna" not in sources:
        print("rsna: not found; nothing to convert.")
        return pd.DataFrame({"status": pd.Series(dtype=str)})
    from ..data.convert import dicom_to_png
    from ..data.rsna import DICOM_DIR, png_dir

    root = Path(sources["rsna"])
    if dst_dir is None:
        dst_dir = png_dir(root)
        if not os.access(root, os.W_OK):
            print(f"{root} is read-only: writing the PNGs to {dst_dir}")
    return dicom_to_png(root / DICOM_DIR, dst_dir)


def prepare_caches(cfg: Any, ctx: Any) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Build the per-split caches the model steps' loaders will open, for every dataset of
    `cfg.datasets` ("all": every binary source found, as the plan's model steps train).

    The rows are found exactly as the model steps find them, through their own
    `StepGrid.prepare` (patient splits, then RSNA ⊂ NIH exclusions when both are in play),
    and the loaders it makes build the caches (`cache=True`) under their own keys.

    Returns a table (dataset, split, images, side, key, built now or already there, folder)
    and each dataset's manifest as its runs train on it.
    """
    import dataclasses

    from ..data.dataset import cache_dir_for
    from .grid import StepGrid

    before = {p.parent.name for p in cache_dir_for(cfg).glob("*/complete")}  # built earlier
    grid = StepGrid(dataclasses.replace(cfg, cache=True, task="binary", seeds=1), ctx)
    rows, manifests = [], {}
    for run in grid.runs:
        exp = grid.prepare(run)
        manifests[run.dataset] = exp.manifest
        for split, loader in exp.loaders.items():
            cache = loader.dataset.cache
            rows.append({"dataset": run.dataset, "split": split, "images": len(cache),
                         "side": cache.size, "key": cache.key[:12],
                         "state": "already there" if cache.folder.name in before else "built now",
                         "folder": str(cache.folder)})
    return pd.DataFrame(rows), manifests


def augmentation_examples(manifest: pd.DataFrame, names: list[str], repeats: int,
                          image_size: int, seed: int = 0) -> dict[str, list[Any]]:
    """One training image through each named pipeline, `repeats` times (de-normalised)."""
    from ..data.transforms import build_transform

    row = manifest[manifest["split"] == "train"].sample(1, random_state=seed).iloc[0]
    image = read_image(row["path"])
    images, titles = [], []
    for name in names:
        transform = build_transform(name, image_size, mean=0.5, std=0.25, boxes=False)
        for i in range(repeats):
            out = transform(image=image)["image"][0].numpy() * 0.25 + 0.5
            images.append((np.clip(out, 0, 1) * 255).astype(np.uint8))
            titles.append(f"{name} #{i + 1}")
    return {"images": images, "titles": titles}
