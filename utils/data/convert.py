"""DICOM → PNG conversion (01_preprocessing) and the record that says it is complete.

`dicom_to_png` writes one 8-bit PNG per DICOM (what `read_dicom` returns: windowed,
MONOCHROME1 inverted) and, when every file converted, `.conversion.json`: the DICOMs'
names, sizes and times it was made from. `png_conversion_status` checks that record
against the DICOMs as they are now, so the RSNA manifest reads the PNGs only when they are
exactly the DICOMs' pixels (`utils.data.rsna`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
from PIL import Image

from ..fileio import atomic_path, atomic_write_json
from .images import DICOM_SUFFIXES, BadImageError, read_dicom

__all__ = ["dicom_to_png", "png_conversion_status", "PNG_VERSION", "CONVERSION_MARKER"]

log = logging.getLogger(__name__)

PNG_VERSION = 1  # bump when read_dicom's pixels change: older PNG conversions are then unused
CONVERSION_MARKER = ".conversion.json"  # dicom_to_png writes it when every file converted


def _require_writable(folder: Path) -> None:
    """Fail once, before decoding thousands of files, when PNGs cannot be written here."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise PermissionError(
            f"{folder}: cannot write the PNGs here ({exc.strerror or exc}). Kaggle's "
            f"/kaggle/input mounts are read-only: pass a writable dst_dir, e.g. "
            f"/kaggle/working/rsna_png") from None


def _dicom_files(src_dir: Path) -> list[Path]:
    return sorted(p for p in src_dir.rglob("*") if p.suffix.lower() in DICOM_SUFFIXES)


def _files_fingerprint(src_dir: Path, files: list[Path]) -> str:
    """sha256 of the DICOMs' relative paths, byte sizes and mtimes: a changed, added or
    removed DICOM makes an earlier conversion stale."""
    facts = []
    for f in files:
        st = f.stat()
        facts.append([str(f.relative_to(src_dir)), st.st_size, st.st_mtime_ns])
    return hashlib.sha256(json.dumps(facts).encode()).hexdigest()[:32]


def _mark_complete(src_dir: Path, dst_dir: Path, sources: list[Path]) -> None:
    """Record that `dst_dir` holds a PNG for every DICOM of `src_dir`, as they are now."""
    info = {"version": PNG_VERSION, "src_dir": str(src_dir.resolve()), "count": len(sources),
            "fingerprint": _files_fingerprint(src_dir, sources)}
    try:
        atomic_write_json(dst_dir / CONVERSION_MARKER, info)
    except OSError as exc:  # a finished set on a read-only mount: usable, just unmarked
        log.warning("cannot write %s in %s (%s)", CONVERSION_MARKER, dst_dir, exc)


def png_conversion_status(src_dir: str | os.PathLike, dst_dir: str | os.PathLike
                          ) -> tuple[bool, str]:
    """Whether `dst_dir` holds `dicom_to_png`'s complete conversion of `src_dir` as it is
    now (same files, sizes, mtimes, reader version): `(True, "")`, or `(False, why)`.

    Example:
        >>> png_conversion_status("rsna/stage_2_train_images", "rsna/stage_2_train_images_png")  # doctest: +SKIP
        (True, '')
    """
    src_dir, dst_dir = Path(src_dir), Path(dst_dir)
    rerun = "run dicom_to_png again (01_preprocessing; converted files are skipped)"
    if not dst_dir.is_dir():
        return False, f"{dst_dir} does not exist"
    try:
        info = json.loads((dst_dir / CONVERSION_MARKER).read_text())
    except (OSError, ValueError):
        return False, f"no {CONVERSION_MARKER}: the conversion did not finish; {rerun}"
    if info.get("version") != PNG_VERSION:
        return False, (f"made by an older reader (version {info.get('version')}, now "
                       f"{PNG_VERSION}); convert again with overwrite=True")
    sources = _dicom_files(src_dir) if src_dir.is_dir() else []
    if info.get("fingerprint") != _files_fingerprint(src_dir, sources):
        return False, (f"the DICOMs changed since the conversion ({info.get('count')} files "
                       f"then, {len(sources)} now); {rerun}")
    pngs = {p.relative_to(dst_dir) for p in dst_dir.rglob("*.png")}
    missing = [s for s in sources if s.relative_to(src_dir).with_suffix(".png") not in pngs]
    if missing:
        return False, f"{len(missing)} PNG(s) are missing, e.g. {missing[0].name}; {rerun}"
    return True, ""


def dicom_to_png(src_dir: str | os.PathLike, dst_dir: str | os.PathLike, *,
                 overwrite: bool = False, workers: int | None = None) -> pd.DataFrame:
    """Convert every `.dcm`/`.dicom` under `src_dir` to an 8-bit PNG under `dst_dir`.

    The relative path is kept (`a/b.dcm` → `a/b.png`). Resumable: a PNG that already exists
    is skipped (writes are atomic, so an existing PNG is always complete). A file that
    fails is listed, not fatal. When no file failed, `dst_dir/.conversion.json` records the
    DICOMs converted (`png_conversion_status`), so the RSNA manifest may read the PNGs.

    Args:
        src_dir: folder searched recursively for DICOM files (by extension).
        dst_dir: output folder.
        overwrite: convert again even when the PNG exists.
        workers: threads (decoding and PNG encoding release the GIL); 0 = in this thread.
    Returns:
        a DataFrame with `src`, `dst`, `status` (converted | skipped | error), `error`.
    Example:
        >>> table = dicom_to_png("rsna/stage_2_train_images", "rsna_png")  # doctest: +SKIP
        >>> table.status.value_counts()                                    # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    src_dir, dst_dir = Path(src_dir), Path(dst_dir)
    if not src_dir.is_dir():
        raise FileNotFoundError(f"{src_dir}: DICOM source folder not found")
    sources = _dicom_files(src_dir)
    if not sources:
        raise FileNotFoundError(f"{src_dir}: no .dcm/.dicom files found below this folder")
    jobs = [(s, dst_dir / s.relative_to(src_dir).with_suffix(".png")) for s in sources]
    if overwrite or not all(dst.exists() for _, dst in jobs):  # a finished set needs no writes
        _require_writable(dst_dir)
    workers = min(4, os.cpu_count() or 1) if workers is None else workers

    def convert(job: tuple[Path, Path]) -> dict:
        src, dst = job
        row = {"src": str(src), "dst": str(dst), "status": "skipped", "error": ""}
        if dst.exists() and not overwrite:
            return row
        try:
            arr = read_dicom(src)
            with atomic_path(dst) as tmp:
                Image.fromarray(arr).save(tmp, format="PNG")
            row["status"] = "converted"
        except (BadImageError, OSError) as exc:
            row.update(status="error", error=str(exc))
        return row

    bar = dict(total=len(jobs), desc="DICOM → PNG", unit="img")
    if workers == 0:
        rows = [convert(j) for j in tqdm(jobs, **bar)]
    else:
        with ThreadPoolExecutor(workers) as pool:
            rows = list(tqdm(pool.map(convert, jobs), **bar))
    table = pd.DataFrame(rows, columns=["src", "dst", "status", "error"])
    counts = table.status.value_counts().to_dict()
    log.info("dicom_to_png %s → %s: %s", src_dir, dst_dir, counts)
    if not (table.status == "error").any():
        _mark_complete(src_dir, dst_dir, sources)
    return table
