"""utils.data.images: every real file reads as 2-D uint8; DICOM photometrics, bit depths and
VOI; bad files fail loudly with the file's name; dicom_to_png resumes."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageFile
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from conftest import shared_path
from utils.data import images
from utils.data.convert import dicom_to_png
from utils.data.images import BadImageError, image_size, is_dicom, read_dicom, read_image

M1, M2 = "cr_chest_monochrome1_jpeg.dcm", "cr_chest_monochrome2_jpeg.dcm"


def _ramp(h: int = 60, w: int = 80) -> np.ndarray:
    """A smooth uint8 test picture (gradient + disc) that JPEG keeps recognisable."""
    y, x = np.mgrid[0:h, 0:w]
    disc = ((x - w / 2) ** 2 + (y - h / 2) ** 2 < (h / 4) ** 2) * 80
    return np.clip(x * 150 / w + disc + 10, 0, 255).astype(np.uint8)


def _dicom(path: Path, arr: np.ndarray, photometric: str = "MONOCHROME2",
           bits_stored: int | None = None, **tags) -> Path:
    """Write an uncompressed single-frame DICOM with pydicom."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.Modality = "CR"
    ds.set_pixel_data(arr, photometric, bits_stored or arr.dtype.itemsize * 8,
                      generate_instance_uid=True)
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


# --- real files -----------------------------------------------------------------------

def test_every_fullres_image_reads_as_2d_uint8():
    files = sorted(p for p in shared_path("fullres", "images").iterdir() if p.is_file())
    assert len(files) > 50
    for path in files:
        img = read_image(path)
        assert img.dtype == np.uint8 and img.ndim == 2, path
        assert img.shape == image_size(path), path
        assert img.std() > 5, f"{path} came out flat"
        small = read_image(path, max_side=128)
        assert max(small.shape) == min(128, max(img.shape)), path
        # aspect ratio kept to within a pixel of rounding
        assert abs(small.shape[0] / small.shape[1] - img.shape[0] / img.shape[1]) < 0.03, path


def test_monochrome1_is_the_exact_inverse_of_monochrome2():
    a = read_dicom(shared_path("dicom", M1))
    b = read_dicom(shared_path("dicom", M2))
    assert a.shape == b.shape == (1024, 1024) and a.dtype == np.uint8
    assert np.array_equal(a, 255 - b)
    # 8-bit data without a VOI is used as stored, not re-stretched
    stored = pydicom.dcmread(shared_path("dicom", M2)).pixel_array
    assert np.array_equal(b, stored)
    assert np.array_equal(read_image(shared_path("dicom", M1)), a)
    assert image_size(shared_path("dicom", M1)) == (1024, 1024)


def test_dicom_without_extension_is_recognised_by_magic(tmp_path):
    plain = tmp_path / "image_without_suffix"
    shutil.copy(shared_path("dicom", M2), plain)
    assert is_dicom(plain)
    assert np.array_equal(read_image(plain), read_dicom(shared_path("dicom", M2)))


# --- PIL modes ------------------------------------------------------------------------

def test_16bit_png_is_scaled_over_its_range(tmp_path):
    arr = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 4096) + 100  # 12-bit data
    Image.fromarray(arr).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    img = read_image(tmp_path / "deep.png")
    assert img.dtype == np.uint8 and img.min() == 0 and img.max() == 255
    row = img[0]  # the first row is a strictly increasing ramp
    assert np.all(np.diff(row.astype(int)) >= 0) and row[-1] > row[0]


def test_palette_png_with_and_without_transparency(tmp_path):
    idx = np.tile(np.arange(4, dtype=np.uint8), (8, 2))
    pal = Image.fromarray(idx, mode="P")
    colors = [(0, 0, 0), (255, 0, 0), (0, 255, 0), (200, 200, 200)]
    pal.putpalette([c for rgb in colors for c in rgb])
    pal.save(tmp_path / "pal.png")
    luma = [round(r * 0.299 + g * 0.587 + b * 0.114) for r, g, b in colors]
    img = read_image(tmp_path / "pal.png")
    assert np.abs(img[0, :4].astype(int) - luma).max() <= 1
    pal.info["transparency"] = 3  # index 3 is see-through → black
    pal.save(tmp_path / "pal_t.png", transparency=3)
    img_t = read_image(tmp_path / "pal_t.png")
    assert img_t[0, 3] == 0 and img_t[0, 2] == img[0, 2]


def test_alpha_is_composited_on_black(tmp_path):
    rgba = np.zeros((4, 3, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:, 0, 3], rgba[:, 1, 3], rgba[:, 2, 3] = 0, 128, 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgba[..., [0, 3]], "LA").save(tmp_path / "la.png")
    for name in ("rgba.png", "la.png"):
        img = read_image(tmp_path / name)
        assert img.shape == (4, 3)
        assert list(img[0]) == [0, 100, 200], name


def test_float_and_int32_images(tmp_path):
    arr = np.linspace(-1.0, 3.0, 50 * 40, dtype=np.float32).reshape(50, 40)
    Image.fromarray(arr, "F").save(tmp_path / "f.tiff")
    Image.fromarray((arr * 1000).astype(np.int32), "I").save(tmp_path / "i.tiff")
    for name in ("f.tiff", "i.tiff"):
        img = read_image(tmp_path / name)
        assert img.dtype == np.uint8 and img[0, 0] == 0 and img[-1, -1] == 255


def test_rgb_jpeg_and_draft_mode_downsizing(tmp_path):
    big = np.kron(_ramp(), np.ones((25, 25), np.uint8))  # 1500×2000
    Image.fromarray(np.stack([big] * 3, -1)).save(tmp_path / "big.jpg", quality=95)
    full = read_image(tmp_path / "big.jpg")
    assert full.shape == (1500, 2000)
    small = read_image(tmp_path / "big.jpg", max_side=250)
    assert small.shape == (188, 250)
    ref = np.asarray(Image.fromarray(full).resize((250, 188), Image.BOX), dtype=float)
    assert np.abs(small - ref).mean() < 3  # draft decoding ≈ full decode + resize
    assert read_image(tmp_path / "big.jpg", max_side=5000).shape == (1500, 2000)


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_huge_image_reads_without_bomb_warning(tmp_path):
    big = np.zeros((10_000, 10_240), np.uint8)  # 102 Mpx: above PIL's default 89 Mpx limit
    big[2000:8000, 3000:7000] = 200
    Image.fromarray(big).save(tmp_path / "huge.jpg", quality=80)
    del big
    assert image_size(tmp_path / "huge.jpg") == (10_000, 10_240)
    img = read_image(tmp_path / "huge.jpg", max_side=512)
    assert img.shape == (500, 512) and abs(int(img[250, 256]) - 200) < 8 and img[10, 10] < 8


def test_decompression_limit_is_raised_and_still_enforced(tmp_path, monkeypatch):
    assert Image.MAX_IMAGE_PIXELS is None or Image.MAX_IMAGE_PIXELS >= 20_000 ** 2
    Image.fromarray(_ramp()).save(tmp_path / "x.png")
    monkeypatch.setattr(images, "MAX_PIXELS", 100)
    with pytest.raises(BadImageError, match="x.png.*limit"):
        read_image(tmp_path / "x.png")


# --- bad files ------------------------------------------------------------------------

def _bad_files(tmp: Path) -> dict[str, Path]:
    Image.fromarray(_ramp(200, 200)).save(tmp / "ok.jpeg", quality=90)
    Image.fromarray(_ramp(200, 200)).save(tmp / "ok.png")
    files = {"empty": tmp / "empty.png", "text": tmp / "notes.png",
             "trunc_jpeg": tmp / "trunc.jpeg", "trunc_png": tmp / "trunc.png",
             "text_dcm": tmp / "text.dcm", "no_pixels": tmp / "nopix.dcm",
             "trunc_dcm": tmp / "trunc.dcm"}
    files["empty"].write_bytes(b"")
    files["text"].write_text("<html>404 Not Found</html>")
    for key, src in (("trunc_jpeg", "ok.jpeg"), ("trunc_png", "ok.png")):
        data = (tmp / src).read_bytes()
        files[key].write_bytes(data[: len(data) // 2])
    files["text_dcm"].write_text("not a dicom")
    ds = pydicom.dcmread(shared_path("dicom", M2), stop_before_pixels=True)
    ds.save_as(files["no_pixels"], enforce_file_format=True)
    data = shared_path("dicom", M2).read_bytes()
    files["trunc_dcm"].write_bytes(data[: len(data) // 2])
    return files


@pytest.mark.filterwarnings("ignore:End of file reached")  # pydicom on the cut DICOM
@pytest.mark.parametrize("kind", ["empty", "text", "trunc_jpeg", "trunc_png", "text_dcm",
                                  "no_pixels", "trunc_dcm"])
def test_bad_files_raise_bad_image_error_naming_the_file(tmp_path, kind):
    path = _bad_files(tmp_path)[kind]
    with pytest.raises(BadImageError) as err:
        read_image(path)
    assert str(path) in str(err.value) and "Fix:" in str(err.value)
    assert err.value.path == str(path)


def test_truncated_images_are_never_loaded_partially(tmp_path, monkeypatch):
    path = _bad_files(tmp_path)["trunc_jpeg"]
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        read_image(path)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        read_image(tmp_path / "nope.png")


# --- synthetic DICOMs -----------------------------------------------------------------

def test_16bit_dicom_min_max_bits_stored_and_monochrome1(tmp_path):
    arr = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 4) % 4096  # 12-bit
    m2 = read_dicom(_dicom(tmp_path / "m2.dcm", arr, bits_stored=12))
    assert m2.min() == 0 and m2.max() == 255
    assert np.array_equal(m2, np.rint(arr / 4092 * 255).astype(np.uint8))
    dirty = arr | 0xF000  # junk in the 4 unused high bits (overlay planes)
    ds = pydicom.dcmread(_dicom(tmp_path / "d.dcm", arr, bits_stored=12))
    ds.PixelData = dirty.tobytes()
    ds.save_as(tmp_path / "dirty.dcm")
    assert np.array_equal(read_dicom(tmp_path / "dirty.dcm"), m2)
    m1 = read_dicom(_dicom(tmp_path / "m1.dcm", arr, "MONOCHROME1", bits_stored=12))
    assert np.array_equal(m1, 255 - m2)


def test_dicom_rescale_and_window(tmp_path):
    arr = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (4, 1))  # 0..4080
    win = read_dicom(_dicom(tmp_path / "w.dcm", arr, bits_stored=12,
                            WindowCenter=2048, WindowWidth=1024))
    values = arr[0].astype(int)
    assert (win[0][values < 1530] == 0).all() and (win[0][values > 2565] == 255).all()
    mid = win[0][(values > 1600) & (values < 2500)]
    assert 0 < mid.min() and mid.max() < 255 and np.all(np.diff(mid.astype(int)) >= 0)
    # Rescale to HU-like units: the same window expressed after rescale gives the same image
    hu = read_dicom(_dicom(tmp_path / "hu.dcm", arr, bits_stored=12, RescaleSlope=2,
                           RescaleIntercept=-1000, WindowCenter=2 * 2048 - 1000,
                           WindowWidth=2 * 1024))
    assert np.abs(hu.astype(int) - win).max() <= 1
    # signed data with a rescale and no window: min-max
    signed = read_dicom(_dicom(tmp_path / "s.dcm", (arr.astype(np.int16) - 2048),
                               bits_stored=16, RescaleSlope=1, RescaleIntercept=0))
    assert signed.min() == 0 and signed.max() == 255 and signed[0, 0] == 0


def test_dicom_voi_lut_sequence(tmp_path):
    arr = np.tile(np.arange(0, 4096, 64, dtype=np.uint16), (2, 1))
    path = _dicom(tmp_path / "lut.dcm", arr, bits_stored=12)
    ds = pydicom.dcmread(path)
    item = Dataset()
    item.add_new(0x00283002, "US", [4096, 0, 16])  # LUT Descriptor: entries, first, bits
    item.add_new(0x00283006, "US", [min(v, 1000) for v in range(4096)])  # flat above 1000
    ds.VOILUTSequence = [item]
    ds.save_as(path)
    img = read_dicom(path)
    values = arr[0].astype(int)
    assert (img[0][values >= 1000] == 255).all() and img[0, 0] == 0
    assert img[0, 8] == round(512 / 1000 * 255)


def test_rgb_dicom_becomes_luma_and_palette_is_refused(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 200
    assert np.all(read_dicom(_dicom(tmp_path / "rgb.dcm", rgb, "RGB")) == round(200 * 0.299))
    path = _dicom(tmp_path / "pal.dcm", rgb[..., 0], "MONOCHROME2")
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = "PALETTE COLOR"
    ds.save_as(path)
    with pytest.raises(BadImageError, match="PALETTE COLOR"):
        read_dicom(path)


# --- conversion -----------------------------------------------------------------------

def test_dicom_to_png_converts_lists_errors_and_resumes(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    shutil.copy(shared_path("dicom", M1), src / "a.dcm")
    shutil.copy(shared_path("dicom", M2), src / "sub" / "b.DCM")
    (src / "broken.dcm").write_text("nope")
    (src / "readme.txt").write_text("ignored")
    first = dicom_to_png(src, tmp_path / "png", workers=2)
    assert list(first.columns) == ["src", "dst", "status", "error"]
    status = dict(zip(first.src.map(lambda s: Path(s).name), first.status))
    assert status == {"a.dcm": "converted", "b.DCM": "converted", "broken.dcm": "error"}
    assert "broken.dcm" in first.loc[first.status == "error", "error"].iloc[0]
    png = tmp_path / "png" / "sub" / "b.png"
    assert np.array_equal(np.asarray(Image.open(png)), read_dicom(src / "sub" / "b.DCM"))
    assert not list((tmp_path / "png").rglob(".*.tmp"))  # no temp files left behind
    second = dicom_to_png(src, tmp_path / "png", workers=0)
    assert sorted(second.status) == ["error", "skipped", "skipped"]
    third = dicom_to_png(src, tmp_path / "png", overwrite=True, workers=0)
    assert sorted(third.status) == ["converted", "converted", "error"]
    with pytest.raises(FileNotFoundError, match="no .dcm"):
        dicom_to_png(tmp_path / "png", tmp_path / "out")


def test_dicom_to_png_on_a_read_only_target_fails_once_naming_the_fix(tmp_path, monkeypatch):
    import errno

    import utils.data.convert as convert

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(shared_path("dicom", M1), src / "a.dcm")
    decoded = []
    monkeypatch.setattr(convert, "read_dicom", lambda p, **kw: decoded.append(p))
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):  # the tests run as root: chmod would not stop us
        if "kaggle_input" in str(self):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(PermissionError, match="read-only.*writable dst_dir"):
        dicom_to_png(src, tmp_path / "kaggle_input" / "png")
    assert decoded == []  # refused before decoding any file
    done = tmp_path / "done_kaggle_input"  # a finished conversion on a read-only mount
    real_mkdir(done)
    (done / "a.png").write_bytes(b"png")
    assert dicom_to_png(src, done).status.tolist() == ["skipped"]
