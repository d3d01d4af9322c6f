"""One reader for chest X-rays: JPEG, PNG and DICOM files in, uint8 grayscale `H×W` out.

Every source (Kermany JPEGs, NIH PNGs, RSNA DICOMs, the demo set) goes through
`read_image`, so the models always see the same thing: 8-bit, one channel, bright = dense.
A file that cannot be read completely raises `BadImageError` naming the file and the fix;
nothing is ever returned half-decoded (PIL's `LOAD_TRUNCATED_IMAGES` must stay False).

Conversions, and why:
- colour (RGB, P, CMYK...) → PIL's luma `L`; X-rays saved in colour are gray in disguise.
- alpha (RGBA, LA, PA) → composited on black: a transparent pixel holds no image, black is
  what air looks like on a radiograph, and the RGB hidden under alpha=0 is arbitrary.
- 16/32-bit integer and float images → min..max of the image to 0..255 (12-bit data in a
  16-bit PNG is common, so the bit depth says little about the range actually used).
- DICOM → see `read_dicom`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image, ImageFile, UnidentifiedImageError

from ..fileio import atomic_path, atomic_write_json

__all__ = ["BadImageError", "read_image", "read_dicom", "image_size", "check_image",
           "dicom_to_png", "png_conversion_status", "is_dicom", "MAX_PIXELS", "PNG_VERSION"]

log = logging.getLogger(__name__)

# Radiographs and scanned films are legitimately large (CR plates ~3000×3500, some scans
# larger); PIL's default bomb limit (~89 Mpx) was set for web images. Raise it once,
# deliberately, to 20k×20k; anything bigger is refused with a BadImageError instead.
MAX_PIXELS = 20_000 * 20_000
if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < MAX_PIXELS:
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS

DICOM_SUFFIXES = (".dcm", ".dicom")
PNG_VERSION = 1  # bump when read_dicom's pixels change: older PNG conversions are then unused
CONVERSION_MARKER = ".conversion.json"  # dicom_to_png writes it when every file converted
_COLOR_DICOM = {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"}


class BadImageError(ValueError):
    """An image file that cannot be read; the message names the file, the problem, the fix."""

    def __init__(self, path: str | os.PathLike, problem: str, fix: str = ""):
        self.path = str(path)
        fix = fix or ("delete or replace the file, or set on_bad_image='skip' to leave it "
                      "out (the skipped files are listed)")
        super().__init__(f"{self.path}: {problem}. Fix: {fix}")


def is_dicom(path: str | os.PathLike) -> bool:
    """DICOM by extension, or by the `DICM` magic at byte 128 (files often lack `.dcm`)."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def read_image(path: str | os.PathLike, max_side: int | None = None) -> np.ndarray:
    """Read a JPEG, PNG (or any PIL format) or DICOM file as uint8 grayscale `H×W`.

    Args:
        path: the image file; DICOM is recognised by extension or by its magic bytes.
        max_side: if given, shrink (never enlarge) so the longer side is at most this,
            keeping the aspect ratio; JPEGs are then decoded at reduced scale (draft
            mode), which makes cache building several times faster on large files.
    Raises:
        BadImageError: empty, truncated, corrupt or non-image files, DICOMs without pixels.
    Example:
        >>> img = read_image("train/NORMAL/IM-0115-0001.jpeg", max_side=256)  # doctest: +SKIP
        >>> img.dtype, img.ndim  # doctest: +SKIP
        (dtype('uint8'), 2)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file (check the manifest's paths "
                                f"and the data root)")
    if is_dicom(path):
        return _shrink(read_dicom(path), max_side)
    return _shrink(_read_pil(path, max_side), max_side)


def _read_pil(path: Path, max_side: int | None) -> np.ndarray:
    if path.stat().st_size == 0:
        raise BadImageError(path, "the file is empty (0 bytes), probably an interrupted "
                                  "download or copy", "download or copy it again")
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True (set by some "
                           "import): truncated images would load as partial pictures. "
                           "Set it back to False before reading images.")
    try:
        with Image.open(path) as img:
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise BadImageError(path, f"{w}×{h} pixels is larger than the "
                                          f"{MAX_PIXELS:,}-pixel limit",
                                    "downsize it with an image tool first")
            if max_side and img.format == "JPEG" and max(w, h) > max_side:
                r = max_side / max(w, h)
                img.draft(img.mode, (max(1, int(np.ceil(w * r))), max(1, int(np.ceil(h * r)))))
            img.load()  # decode now: truncation must fail here, not later in a worker
            return _to_gray(img, path)
    except BadImageError:
        raise
    except UnidentifiedImageError:
        raise BadImageError(path, "is not an image file PIL can read (wrong extension, an "
                                  "HTML error page or another file type?)",
                            "replace it with the real image") from None
    except Image.DecompressionBombError as exc:
        raise BadImageError(path, f"is too large to decode safely ({exc})",
                            "downsize it with an image tool first") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImageError(path, f"could not be decoded, the file is truncated or "
                                  f"corrupt ({exc})", "download or copy it again") from None


def _to_gray(img: Image.Image, path: Path) -> np.ndarray:
    """PIL image of any mode → uint8 `H×W` (see the module docstring for the choices)."""
    mode = img.mode
    if mode == "L":
        return np.asarray(img, dtype=np.uint8).copy()
    if mode == "P":  # palette: expand first; transparency turns it into RGBA
        return _to_gray(img.convert("RGBA" if "transparency" in img.info else "RGB"), path)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        alpha = np.asarray(img.getchannel("A"), dtype=np.uint16)
        gray = np.asarray(img.convert("RGB").convert("L"), dtype=np.uint16)
        return ((gray * alpha + 127) // 255).astype(np.uint8)  # composite on black
    if mode.startswith("I") or mode == "F":  # I;16, I;16B, I, F: scale the used range
        return _minmax_u8(np.asarray(img), path)
    if mode == "1" or mode == "RGB":
        return np.asarray(img.convert("L"), dtype=np.uint8).copy()
    try:  # CMYK, YCbCr, LAB, HSV...: through RGB to luma
        return np.asarray(img.convert("RGB").convert("L"), dtype=np.uint8).copy()
    except ValueError as exc:
        raise BadImageError(path, f"unsupported PIL image mode {mode!r} ({exc})",
                            "convert it to an 8-bit grayscale PNG") from None


def _minmax_u8(arr: np.ndarray, path: Path) -> np.ndarray:
    """Map an image's own min..max to 0..255; a constant image becomes all zeros."""
    arr = np.asarray(arr, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise BadImageError(path, "contains NaN or infinite pixel values",
                            "re-export the image")
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.rint((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _shrink(arr: np.ndarray, max_side: int | None) -> np.ndarray:
    """Downsize so the longer side is `max_side` (area interpolation: no aliasing)."""
    if not max_side or max(arr.shape) <= max_side:
        return arr
    h, w = arr.shape
    r = max_side / max(h, w)
    size = (max(1, round(w * r)), max(1, round(h * r)))
    return cv2.resize(arr, size, interpolation=cv2.INTER_AREA)


def read_dicom(path: str | os.PathLike) -> np.ndarray:
    """Read a single-frame DICOM radiograph as uint8 `H×W`, bright = dense.

    Steps: decode (compressed syntaxes such as RSNA's JPEG baseline via the installed
    pylibjpeg/Pillow handlers); keep only the `BitsStored` low bits of unsigned data;
    apply the Modality LUT (rescale slope/intercept); then the VOI LUT or window
    centre/width when present, its output range mapped to 0..255. Without a VOI, 8-bit
    unsigned data is used as stored (it is already display-ready, as in RSNA), and
    anything deeper is min..max scaled. MONOCHROME1 is inverted last (255 - x). RGB/YBR
    images are converted to luma.

    Example:
        >>> read_dicom("0004cfab-14fd-4e49-80ba-63a80b6bddd6.dcm").shape  # doctest: +SKIP
        (1024, 1024)
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError) as exc:
        raise BadImageError(path, f"is not a readable DICOM file ({exc})",
                            "download or copy it again") from None
    if "PixelData" not in ds:
        raise BadImageError(path, "is a DICOM without pixel data (a report, presentation "
                                  "state or header-only file)", "leave it out of the "
                                  "image list")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise BadImageError(path, f"has {ds.NumberOfFrames} frames; a single-frame "
                                  f"radiograph is expected", "export the frame you want")
    try:
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - every decoder failure means the same here
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise BadImageError(path, f"pixel data could not be decoded (transfer syntax "
                                  f"{getattr(ts, 'name', ts)}: {type(exc).__name__}: {exc})",
                            "check pylibjpeg/pylibjpeg-libjpeg are installed, or the file "
                            "is truncated: copy it again") from None
    return _dicom_to_u8(arr, ds, path)


def _dicom_to_u8(arr: np.ndarray, ds, path: Path) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    color = photometric in _COLOR_DICOM
    if not color and photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise BadImageError(path, f"PhotometricInterpretation {photometric!r} is not "
                                  f"supported", "export it as MONOCHROME2 or RGB")
    bits, signed = int(ds.get("BitsStored", 8)), ds.get("PixelRepresentation", 0) == 1
    if not signed and np.issubdtype(arr.dtype, np.integer) and bits < arr.dtype.itemsize * 8:
        arr = arr & ((1 << bits) - 1)  # garbage in unused high bits (overlays) must go
    if color:  # pydicom hands YBR over as RGB; luma weights as PIL's convert("L")
        values, voi = arr.astype(np.float64) @ np.array([0.299, 0.587, 0.114]), None
    else:
        values = apply_modality_lut(arr, ds)
        voi = _apply_voi(values, ds)
    if voi is not None:
        out, lo, hi = voi
        u8 = np.clip(np.rint((out - lo) * (255.0 / max(hi - lo, 1e-12))), 0, 255)
        u8 = u8.astype(np.uint8)
    elif bits <= 8 and not signed and _identity_modality(ds):
        u8 = np.clip(np.rint(values), 0, 255).astype(np.uint8)  # display-ready as stored
    else:
        u8 = _minmax_u8(values, path)
    return 255 - u8 if photometric == "MONOCHROME1" else u8


def _identity_modality(ds) -> bool:
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return slope == 1.0 and intercept == 0.0 and not ds.get("ModalityLUTSequence")


def _apply_voi(arr: np.ndarray, ds) -> tuple[np.ndarray, float, float] | None:
    """VOI LUT (preferred) or windowing, with the output range it maps onto; None if absent."""
    from pydicom.pixels import apply_voi, apply_windowing

    seq = ds.get("VOILUTSequence")
    if seq and seq[0].get("LUTDescriptor") is not None and seq[0].get("LUTData") is not None:
        entries, first = int(seq[0].LUTDescriptor[0]) or 2 ** 16, int(seq[0].LUTDescriptor[1])
        lut = apply_voi(np.arange(first, first + entries), ds)
        return apply_voi(np.rint(arr).astype(np.int64), ds), float(lut.min()), float(lut.max())
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        with np.errstate(over="ignore"):  # the range probe overflows exp() in SIGMOID
            lo, hi = apply_windowing(np.array([-1e300, 1e300]), ds)
        return apply_windowing(arr, ds), float(lo), float(hi)
    return None


def check_image(path: str | os.PathLike) -> None:
    """Cheap structural check, run over a whole manifest before training: raise
    `BadImageError` for empty files, files that are not images, JPEGs without their end
    marker and PNGs without their IEND chunk (truncated copies), and DICOMs without pixels.

    It reads the header and the last bytes only, so it costs milliseconds per file; a
    full decode (`read_image`) still guards everything else.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(132)
            fh.seek(max(0, size - 1024))
            tail = fh.read()
    except OSError as exc:
        raise BadImageError(path, f"cannot be opened ({exc.strerror or exc})",
                            "check the path and permissions") from exc
    if size == 0:
        raise BadImageError(path, "the file is empty (0 bytes), probably an interrupted "
                                  "download or copy")
    truncated = "is truncated (its end marker is missing), probably an interrupted copy"
    if head[:3] == b"\xff\xd8\xff":
        if b"\xff\xd9" not in tail:
            raise BadImageError(path, f"JPEG {truncated}")
    elif head[:8] == b"\x89PNG\r\n\x1a\n":
        if b"IEND" not in tail[-32:]:
            raise BadImageError(path, f"PNG {truncated}")
    elif is_dicom(path):
        import pydicom

        try:
            ds = pydicom.dcmread(path, defer_size="1 KB")
        except Exception as exc:  # noqa: BLE001 - any parse failure is a bad file
            raise BadImageError(path, f"is not a readable DICOM ({exc})") from exc
        if "PixelData" not in ds:
            raise BadImageError(path, "is a DICOM without pixel data")
    else:
        try:
            with Image.open(path) as img:
                img.verify()
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for non-images
            raise BadImageError(path, f"is not an image file PIL can read ({exc})") from exc


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """`(height, width)` from the header only (PIL lazy open; DICOM Rows/Columns)."""
    path = Path(path)
    try:
        if is_dicom(path):
            import pydicom

            ds = pydicom.dcmread(path, stop_before_pixels=True)
            return int(ds.Rows), int(ds.Columns)
        with Image.open(path) as img:
            return img.size[1], img.size[0]
    except BadImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - any header failure is a bad file
        raise BadImageError(path, f"its header could not be read ({type(exc).__name__}: "
                                  f"{exc})", "download or copy it again") from None


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
