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

The DICOM → PNG conversion of 01_preprocessing lives in `convert.py`.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

__all__ = ["BadImageError", "read_image", "read_dicom", "image_size", "check_image",
           "is_dicom", "MAX_PIXELS", "DICOM_SUFFIXES"]


# Radiographs and scanned films are legitimately large (CR plates ~3000×3500, some scans
# larger); PIL's default bomb limit (~89 Mpx) was set for web images. Raise it once,
# deliberately, to 20k×20k; anything bigger is refused with a BadImageError instead.
MAX_PIXELS = 20_000 * 20_000
if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < MAX_PIXELS:
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS

DICOM_SUFFIXES = (".dcm", ".dicom")
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

    Steps: decode (every transfer syntax pydicom has a decoder for, through the installed
    plugins: pylibjpeg with libjpeg and openjpeg, GDCM, pyjpegls, Pillow; uncompressed,
    deflated, big-endian and RLE natively); keep only the `BitsStored` low bits of
    unsigned data; apply the Modality LUT (rescale slope/intercept); then the VOI LUT or
    window centre/width when present, its output range mapped to 0..255. Without a VOI,
    8-bit unsigned data is used as stored (it is already display-ready, as in RSNA), and
    anything deeper is min..max scaled. MONOCHROME1 is inverted last (255 - x). RGB/YBR
    images become grayscale as the PNG path does (PIL's luma `L`).

    Raises:
        BadImageError: not DICOM, no pixels, several frames, a malformed header value, a
            syntax no installed plugin decodes (naming what to install), corrupt data.
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
    frames = _header_number(ds, "NumberOfFrames", 1, path)
    if frames > 1:
        raise BadImageError(path, f"has {frames} frames; a single-frame radiograph is "
                                  f"expected", "export the frame you want")
    try:
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - explained by _decode_error
        raise _decode_error(ds, path, exc) from None
    try:
        return _dicom_to_u8(arr, ds, path)
    except BadImageError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        raise BadImageError(path, f"has a malformed image header ({type(exc).__name__}: "
                                  f"{exc})", _HEADER_FIX) from None


_HEADER_FIX = ("correct that element (with pydicom: ds = pydicom.dcmread(f), set it, "
               "ds.save_as(f)) or re-export the image from its source")
_PLUGINS = "pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg, python-gdcm, pyjpegls"


def _header_number(ds, keyword: str, default: int, path: Path) -> int:
    """An integer header value, or a BadImageError naming the element and its raw value
    (pydicom keeps malformed IS strings such as '1A' as text until they are used)."""
    raw = ds.get(keyword, default)
    try:
        return int(raw) if raw not in (None, "") else default
    except (TypeError, ValueError):
        raise BadImageError(path, f"its header element {keyword} has the malformed value "
                                  f"{str(raw)!r} (an integer is expected)",
                            f"set it to an integer (with pydicom: ds = pydicom.dcmread(f); "
                            f"ds.{keyword} = {default}; ds.save_as(f)) or re-export the image "
                            f"from its source") from None


def _decode_error(ds, path: Path, exc: Exception) -> BadImageError:
    """Why the pixel data did not decode: no decoder for the syntax, no plugin installed
    for it (what to install), an incomplete header, or data the installed plugins refuse."""
    from pydicom.pixels import get_decoder

    uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    detail = f"{type(exc).__name__}: {exc}"
    if uid is None:
        return BadImageError(path, f"has no TransferSyntaxUID in its file meta ({detail})",
                             "re-export it with a complete file meta header")
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        return BadImageError(path, f"uses transfer syntax {uid.name}, which no pydicom "
                                   f"decoder reads", "convert it to an uncompressed syntax "
                                   "first, e.g. `gdcmconv --raw in.dcm out.dcm`")
    if not decoder.is_available:
        return BadImageError(path, f"uses transfer syntax {uid.name}, but no decoder plugin "
                                   f"for it is installed ({'; '.join(decoder.missing_dependencies)})",
                             f"check {_PLUGINS} are installed: pip install -r requirements.txt")
    if isinstance(exc, (AttributeError, KeyError, TypeError)):
        return BadImageError(path, f"has an incomplete or malformed image header ({detail})",
                             _HEADER_FIX)
    plugins = ", ".join(decoder.available_plugins) or "pydicom's own decoder"
    return BadImageError(path, f"pixel data could not be decoded (transfer syntax {uid.name}, "
                               f"tried {plugins}: {detail})",
                         "the file is probably truncated or corrupt: copy or export it again")


def _dicom_to_u8(arr: np.ndarray, ds, path: Path) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    color = photometric in _COLOR_DICOM
    if not color and photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise BadImageError(path, f"PhotometricInterpretation {photometric!r} is not "
                                  f"supported", "export it as MONOCHROME2 or RGB")
    bits = _header_number(ds, "BitsStored", arr.dtype.itemsize * 8, path)
    signed = _header_number(ds, "PixelRepresentation", 0, path) == 1
    if not signed and np.issubdtype(arr.dtype, np.integer) and bits < arr.dtype.itemsize * 8:
        arr = arr & ((1 << bits) - 1)  # garbage in unused high bits (overlays) must go
    if color and arr.dtype == np.uint8:  # pydicom hands YBR over as RGB; gray as for a PNG
        return np.asarray(Image.fromarray(arr, "RGB").convert("L"), dtype=np.uint8).copy()
    if color:  # 16/32-bit colour: the same luma weights, then min..max as any deep image
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
