"""DICOM coverage: one small file per transfer syntax, built here with pydicom's encoders
(RLE, deflate, big endian, JPEG 2000 via pylibjpeg-openjpeg, JPEG-LS via pyjpegls) and GDCM
(JPEG lossless), plus pydicom's own 12-bit JPEG extended test file (`JPGExtended.dcm`,
shipped in the pydicom wheel: no encoder on PyPI writes that syntax). Each must read with
the same windowing and MONOCHROME1 handling as the uncompressed file; colour ones become
the gray the PNG path gives; malformed or undecodable files are BadImageErrors that say
why; and `python -m utils.evaluation.predict` over the folder writes one row per file."""
from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from pydicom import uid as U
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate

from utils.data.images import BadImageError, read_dicom, read_image

LOSSLESS = {"explicit_le": U.ExplicitVRLittleEndian, "implicit_le": U.ImplicitVRLittleEndian,
            "explicit_be": U.ExplicitVRBigEndian, "deflated": U.DeflatedExplicitVRLittleEndian,
            "rle": U.RLELossless, "j2k_lossless": U.JPEG2000Lossless,
            "jpegls_lossless": U.JPEGLSLossless, "jpeg_lossless": U.JPEGLossless,
            "jpeg_lossless_sv1": U.JPEGLosslessSV1}
LOSSY = {"j2k": U.JPEG2000, "jpegls_near": U.JPEGLSNearLossless}
WINDOW = {12: (1800.0, 2400.0), 16: (30000.0, 40000.0)}  # centre, width


def _picture(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth uint8 test picture (a gradient and a few blobs) that lossy codecs keep."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = 0.6 * x + 0.2 * y
    for cy, cx, r in rng.uniform(0.1, 0.6, size=(4, 3)):
        img += 0.5 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (0.05 * r))
    return np.rint(255 * (img - img.min()) / np.ptp(img)).astype(np.uint8)


def _chest(bits: int) -> np.ndarray:
    """The test picture `bits` deep (uint16), using the whole range."""
    return (_picture(48, 64, 7).astype(np.uint32) * ((1 << bits) - 1) // 255).astype(np.uint16)


def _dataset(arr: np.ndarray, photometric: str, bits: int, **tags) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = U.ExplicitVRLittleEndian
    ds.SOPClassUID, ds.Modality = U.SecondaryCaptureImageStorage, "CR"
    ds.set_pixel_data(arr, photometric, bits, generate_instance_uid=True)
    for key, value in tags.items():
        setattr(ds, key, value)
    return ds


def _gdcm_transcode(src: Path, dst: Path, syntax: U.UID) -> None:
    gdcm = pytest.importorskip("gdcm")  # python-gdcm (requirements.txt) encodes JPEG lossless
    reader = gdcm.ImageReader()
    reader.SetFileName(str(src))
    assert reader.Read(), src
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.GetTSType(str(syntax))))
    change.SetInput(reader.GetImage())
    assert change.Change(), syntax.name
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(dst))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write(), dst


def write_syntax(path: Path, arr: np.ndarray, syntax: U.UID, photometric: str = "MONOCHROME2",
                 bits: int = 12, **tags) -> Path:
    """`arr` stored in `syntax` at `path` (uncompressed first, then encoded)."""
    ds = _dataset(arr, photometric, bits, **tags)
    if syntax in (U.JPEGLossless, U.JPEGLosslessSV1):
        plain = path.with_suffix(".plain.dcm")
        ds.save_as(plain, enforce_file_format=True)
        _gdcm_transcode(plain, path, syntax)
        plain.unlink()
        return path
    if syntax == U.ExplicitVRBigEndian:
        ds.PixelData = arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    if syntax.is_compressed:
        options = {U.JPEG2000: {"j2k_cr": [8]}, U.JPEGLSNearLossless: {"jls_error": 3}}
        ds.compress(syntax, **options.get(syntax, {}))
    else:
        ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True, implicit_vr=syntax.is_implicit_VR,
               little_endian=syntax.is_little_endian)
    return path


def _reference(tmp: Path, arr: np.ndarray, photometric: str, bits: int, **tags) -> np.ndarray:
    return read_dicom(write_syntax(tmp / f"ref_{photometric}_{bits}.dcm", arr,
                                   U.ExplicitVRLittleEndian, photometric, bits, **tags))


# --- grayscale: every syntax, windowing and MONOCHROME1 kept ---------------------------------

@pytest.mark.parametrize("bits", [12, 16])
@pytest.mark.parametrize("name", list(LOSSLESS))
def test_lossless_syntaxes_read_exactly_as_uncompressed(tmp_path, name, bits):
    arr = _chest(bits)
    centre, width = WINDOW[bits]
    for photometric in ("MONOCHROME2", "MONOCHROME1"):
        tags = {"WindowCenter": centre, "WindowWidth": width}
        path = write_syntax(tmp_path / f"{name}_{photometric}.dcm", arr, LOSSLESS[name],
                            photometric, bits, **tags)
        assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == LOSSLESS[name]
        img = read_dicom(path)
        assert np.array_equal(img, _reference(tmp_path, arr, photometric, bits, **tags))
        assert img.dtype == np.uint8 and img.shape == arr.shape
    m2, m1 = (read_dicom(tmp_path / f"{name}_{p}.dcm") for p in ("MONOCHROME2", "MONOCHROME1"))
    assert np.array_equal(m1, 255 - m2)  # stored the same, shown inverted
    lo, hi = centre - width / 2, centre + width / 2  # the window, not the data's range
    assert (m2[arr <= lo] == 0).all() and (m2[arr >= hi] == 255).all()
    assert (arr <= lo).any() and (arr >= hi).any()


@pytest.mark.parametrize("name", list(LOSSY))
def test_lossy_syntaxes_read_close_to_uncompressed(tmp_path, name):
    arr = _chest(12)
    tags = {"WindowCenter": WINDOW[12][0], "WindowWidth": WINDOW[12][1]}
    img = read_dicom(write_syntax(tmp_path / f"{name}.dcm", arr, LOSSY[name], **tags))
    ref = _reference(tmp_path, arr, "MONOCHROME2", 12, **tags)
    diff = np.abs(img.astype(int) - ref)
    assert diff.mean() < 1.5 and np.percentile(diff, 99) <= 8


def test_12_bit_jpeg_extended_keeps_its_window_and_monochrome1(tmp_path):
    source = pydicom.dcmread(get_testdata_file("JPGExtended.dcm"))
    assert source.file_meta.TransferSyntaxUID == U.JPEGExtended12Bit and source.BitsStored == 12
    decoded = source.pixel_array
    for photometric in ("MONOCHROME2", "MONOCHROME1"):
        ds = pydicom.dcmread(get_testdata_file("JPGExtended.dcm"))
        ds.PhotometricInterpretation, ds.WindowCenter, ds.WindowWidth = photometric, 250, 300
        ds.save_as(tmp_path / f"jpeg12_{photometric}.dcm")
    m2, m1 = (read_dicom(tmp_path / f"jpeg12_{p}.dcm") for p in ("MONOCHROME2", "MONOCHROME1"))
    ref = _reference(tmp_path, decoded, "MONOCHROME2", 12, WindowCenter=250, WindowWidth=300)
    assert np.array_equal(m2, ref) and np.array_equal(m1, 255 - m2)
    assert (m2[decoded >= 400] == 255).all() and (m2[decoded <= 100] == 0).all()


def test_8_bit_jpeg_baseline(tmp_path):
    img = _picture(48, 64, 3)
    buf = BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    ds = _dataset(img, "MONOCHROME2", 8)
    ds.file_meta.TransferSyntaxUID = U.JPEGBaseline8Bit
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.save_as(tmp_path / "baseline.dcm", enforce_file_format=True)
    out = read_dicom(tmp_path / "baseline.dcm")
    assert np.abs(out.astype(int) - img).mean() < 2


# --- colour: gray exactly as the PNG path makes it -------------------------------------------

def _rgb() -> np.ndarray:
    gray = _picture(32, 40, 5)
    return np.stack([gray, np.flipud(gray), 255 - gray], axis=-1)


@pytest.mark.parametrize("name, syntax", [("rgb_le", U.ExplicitVRLittleEndian),
                                          ("rgb_rle", U.RLELossless),
                                          ("rgb_j2k", U.JPEG2000Lossless),
                                          ("rgb_jpegls", U.JPEGLSLossless)])
def test_rgb_dicom_is_the_gray_of_the_same_png(tmp_path, name, syntax):
    rgb = _rgb()
    Image.fromarray(rgb).save(tmp_path / "same.png")
    path = write_syntax(tmp_path / f"{name}.dcm", rgb, syntax, "RGB", 8)
    assert np.array_equal(read_dicom(path), read_image(tmp_path / "same.png"))


def test_ybr_full_reads_as_the_gray_of_its_rgb(tmp_path):
    from pydicom.pixels import convert_color_space

    rgb = _rgb()
    Image.fromarray(rgb).save(tmp_path / "same.png")
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    out = read_dicom(write_syntax(tmp_path / "ybr.dcm", ybr, U.ExplicitVRLittleEndian,
                                  "YBR_FULL", 8))
    assert np.abs(out.astype(int) - read_image(tmp_path / "same.png")).max() <= 2


# --- errors that say why ----------------------------------------------------------------------

def test_malformed_header_value_is_a_bad_image_error_naming_it(tmp_path):
    path = write_syntax(tmp_path / "frames.dcm", _chest(12), U.ExplicitVRLittleEndian,
                        NumberOfFrames=11)
    element = b"\x28\x00\x08\x00IS\x02\x00"  # (0028,0008) IS, 2 bytes: pydicom refuses to
    data = path.read_bytes()                     # write '1A', so patch the file as a device would
    assert data.count(element + b"11") == 1
    path.write_bytes(data.replace(element + b"11", element + b"1A"))
    with pytest.raises(BadImageError, match=r"frames\.dcm: .*NumberOfFrames has the "
                                            r"malformed value '1A'.*Fix: set it to an integer"):
        read_dicom(path)
    with pytest.raises(BadImageError, match="NumberOfFrames .* '1A'"):
        read_dicom(get_testdata_file("badVR.dcm"))  # pydicom's own malformed-VR example


def test_plugin_advice_only_when_no_plugin_is_installed(tmp_path, monkeypatch):
    from pydicom.pixels import get_decoder

    corrupt = get_testdata_file("JPEG-lossy.dcm")  # 12-bit JPEG with a misplaced marker
    with pytest.raises(BadImageError) as err:
        read_dicom(corrupt)
    assert "tried" in str(err.value) and "installed" not in str(err.value)
    path = write_syntax(tmp_path / "j2k.dcm", _chest(12), U.JPEG2000Lossless)
    monkeypatch.setattr(get_decoder(U.JPEG2000Lossless), "_available", {})  # as if absent
    with pytest.raises(BadImageError, match=r"j2k\.dcm: uses transfer syntax JPEG 2000 .* no "
                                            r"decoder plugin .* check pylibjpeg.* installed"):
        read_dicom(path)


# --- python -m utils.evaluation.predict over the folder -------------------------------------------------

def test_predict_writes_one_row_per_dicom_and_errors_only_for_the_bad(tmp_path, capsys):
    from helpers_train import tiny_checkpoint
    from utils.evaluation.predict import main

    folder = tmp_path / "dicoms"
    folder.mkdir()
    arr = _chest(12)
    for name, syntax in {**LOSSLESS, **LOSSY}.items():
        write_syntax(folder / f"{name}.dcm", arr, syntax, WindowCenter=1800, WindowWidth=2400)
    write_syntax(folder / "rgb_j2k.dcm", _rgb(), U.JPEG2000Lossless, "RGB", 8)
    Path(folder / "jpeg_extended_12bit.dcm").write_bytes(
        Path(get_testdata_file("JPGExtended.dcm")).read_bytes())
    bad = {"corrupt_jpeg12.dcm": "JPEG-lossy.dcm", "malformed_frames.dcm": "badVR.dcm"}
    for name, source in bad.items():
        (folder / name).write_bytes(Path(get_testdata_file(source)).read_bytes())
    checkpoint = tiny_checkpoint(tmp_path / "ckpt", threshold=0.4)
    out = tmp_path / "preds.csv"
    code = main(["--checkpoint", str(checkpoint), "--images", str(folder), "--out", str(out)])
    table = pd.read_csv(out, keep_default_na=False)
    assert sorted(Path(p).name for p in table["path"]) == sorted(p.name for p in folder.iterdir())
    failed = table[table["error"] != ""]
    assert sorted(Path(p).name for p in failed["path"]) == sorted(bad) and code == len(bad)
    assert not failed["error"].str.contains("installed").any()
    assert failed["error"].str.contains("NumberOfFrames").sum() == 1
    assert table.loc[table["error"] == "", "probability"].astype(float).between(0, 1).all()
