"""A placeholder NIH ChestX-ray14 layout built from the real `Data_Entry_2017` rows.

`benchmarks.nih_scale` measures the manifest, split and cache paths at full size; it needs
the Kaggle folder layout with one image per label row, but not the 45 GB of pixels. So the
label files are real (the 112,120 rows of `Data_Entry_2017_v2020.csv.gz` and the boxes of
`BBox_List_2017.csv.gz` in `../shared/data/nih`) and each image is a small placeholder PNG:
a few distinct low-frequency pictures encoded once, written under the real file names in
`images_001/images/` ... `images_012/images/` (the real set's ~10,000 per folder), by several
processes (file creation is system-call bound, so it scales with cores).

The official `train_val_list.txt` / `test_list.txt` are not in the shared data; the layout
writes a patient-level stand-in (patients whose id is divisible by 5 are test, about 20 %
of the images; the real list holds 22.8 %), so the manifest takes the official-split path.
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

__all__ = ["PER_FOLDER", "placeholder_pngs", "write_layout", "read_entries"]

PER_FOLDER = 10_000          # images per images_NNN folder, as on Kaggle
_CHUNK = 2_000               # files per writer task
_BLOBS: list[bytes] = []     # set in each writer process by _init_writer


def read_entries(data_entry: str | os.PathLike) -> pd.DataFrame:
    """The real label rows, in file order (sorted by image name, so patients stay whole)."""
    return pd.read_csv(data_entry)


def placeholder_pngs(count: int = 8, side: int = 64, seed: int = 0) -> list[bytes]:
    """`count` distinct grayscale PNGs of `side`² px: smooth random shading (a few KB each)."""
    rng = np.random.default_rng(seed)
    blobs = []
    for _ in range(count):
        coarse = rng.integers(0, 256, (8, 8)).astype(np.uint8)
        img = cv2.resize(coarse, (side, side), interpolation=cv2.INTER_CUBIC)
        ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        assert ok, "cv2 could not encode a PNG"
        blobs.append(buf.tobytes())
    return blobs


def _init_writer(blobs: list[bytes]) -> None:
    _BLOBS[:] = blobs


def _write_chunk(paths: list[str]) -> int:
    for i, path in enumerate(paths):
        with open(path, "wb") as fh:
            fh.write(_BLOBS[i % len(_BLOBS)])
    return len(paths)


def _write_images(paths: list[str], blobs: list[bytes], workers: int) -> None:
    chunks = [paths[i:i + _CHUNK] for i in range(0, len(paths), _CHUNK)]
    if workers <= 1 or len(chunks) <= 1:
        _init_writer(blobs)
        for chunk in chunks:
            _write_chunk(chunk)
        return
    with ProcessPoolExecutor(workers, initializer=_init_writer, initargs=(blobs,)) as pool:
        for _ in pool.map(_write_chunk, chunks):
            pass


def write_layout(entries: pd.DataFrame, root: str | os.PathLike, *,
                 bbox: pd.DataFrame | None = None, workers: int | None = None,
                 side: int = 64) -> Path:
    """Write the Kaggle NIH layout for `entries` (Data_Entry rows) under `root`.

    Writes `Data_Entry_2017_v2020.csv`, `BBox_List_2017.csv` (the rows of `bbox` whose image
    is in `entries`), `train_val_list.txt` / `test_list.txt` (by patient, see the module
    docstring) and one placeholder PNG per row.
    Example:
        >>> rows = read_entries("Data_Entry_2017_v2020.csv.gz").head(500)  # doctest: +SKIP
        >>> write_layout(rows, "/tmp/nih")                                  # doctest: +SKIP
    """
    root = Path(root)
    names = entries["Image Index"].astype(str).tolist()
    folders = [root / f"images_{k + 1:03d}" / "images" for k in range(-(-len(names) // PER_FOLDER))]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    paths = [str(folders[i // PER_FOLDER] / n) for i, n in enumerate(names)]
    _write_images(paths, placeholder_pngs(side=side), workers or os.cpu_count() or 1)
    entries.to_csv(root / "Data_Entry_2017_v2020.csv", index=False)
    if bbox is not None:
        bbox[bbox["Image Index"].isin(set(names))].to_csv(root / "BBox_List_2017.csv",
                                                          index=False)
    test = entries["Patient ID"].astype(int) % 5 == 0
    for fname, rows in (("train_val_list.txt", ~test), ("test_list.txt", test)):
        (root / fname).write_text("".join(f"{n}\n" for n in entries.loc[rows, "Image Index"]))
    return root
