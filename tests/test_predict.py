"""utils.evaluation.predict: one CSV row per file, errors in rows not crashes, exit code = failures.

The checkpoint is a real `fit` run (simple_cnn, 32 px, a few steps) given threshold 0.4 as
evaluation would; the folder mixes real full-resolution X-rays (every PIL mode the shared
data has), real CR DICOMs, generated modes (I;16, a 8200×8200 PNG, an extensionless
DICOM) and six broken files.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from conftest import ROOT, shared_path
from helpers_train import tiny_checkpoint
from utils.training.checkpoint import load_checkpoint, update_checkpoint
from utils.evaluation.predict import find_images, main, predict_files

BAD = {"empty.png", "truncated.jpg", "truncated.png", "text.png", "nopixels.dcm",
       "palette.dcm"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, one_torch_thread) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), threshold=0.4)


def _dicom(path: Path, arr: np.ndarray, photometric: str = "MONOCHROME2") -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.Modality = "CR"
    ds.set_pixel_data(arr, photometric, arr.dtype.itemsize * 8, generate_instance_uid=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _real_images(n_per_mode: int = 2) -> list[Path]:
    """The smallest files of each (PIL mode, format) in the shared full-res set."""
    by_kind: dict[tuple, list[Path]] = {}
    for p in sorted(shared_path("fullres", "images").iterdir()):
        with Image.open(p) as im:
            by_kind.setdefault((im.mode, im.format), []).append(p)
    return [p for files in by_kind.values()
            for p in sorted(files, key=lambda f: f.stat().st_size)[:n_per_mode]]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("incoming")
    real = _real_images()
    for p in real:
        (root / p.name).symlink_to(p)
    m2 = shared_path("dicom", "cr_chest_monochrome2_jpeg.dcm")
    (root / "dicom").mkdir()
    (root / "dicom" / "m1.dcm").symlink_to(shared_path("dicom", "cr_chest_monochrome1_jpeg.dcm"))
    shutil.copy(m2, root / "dicom" / "scan0001")  # DICOM without an extension
    shutil.copy(m2, root / "dicom" / "1.2.840.113619.5")  # a UID for a name
    gen = root / "generated"
    gen.mkdir()
    ramp = (np.arange(64 * 48, dtype=np.uint32).reshape(48, 64) * 20).astype(np.uint16)
    Image.fromarray(ramp).save(gen / "i16.png")  # PIL mode I;16
    huge = np.zeros((8200, 8200), np.uint8)
    huge[2000:6000, 1500:3500] = 200
    Image.fromarray(huge).save(gen / "huge.png", compress_level=1)
    # the broken ones
    (gen / "empty.png").write_bytes(b"")
    jpeg = next(p for p in real if p.suffix.lower() in (".jpg", ".jpeg"))
    png = next(p for p in real if p.suffix.lower() == ".png")
    (gen / "truncated.jpg").write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    (gen / "truncated.png").write_bytes(png.read_bytes()[: png.stat().st_size // 2])
    (gen / "text.png").write_text("<html>404 Not Found</html>\n")
    ds = pydicom.dcmread(m2)
    del ds.PixelData
    ds.save_as(gen / "nopixels.dcm")
    _dicom(gen / "palette.dcm", np.full((16, 16), 7, np.uint8), "PALETTE COLOR")
    # never listed: not an image, hidden, a temp file of an interrupted atomic write
    (gen / "notes.txt").write_text("not an image")
    (gen / ".hidden.png").write_bytes(png.read_bytes())
    (gen / ".huge.png.abc123.tmp").write_bytes(b"")
    assert {Image.open(p).mode for p in real} >= {"L", "RGB", "RGBA", "P"}
    return root


def _expected_names(folder: Path) -> set[str]:
    real = {p.name for p in folder.iterdir() if p.is_symlink()}
    return real | {"m1.dcm", "scan0001", "1.2.840.113619.5", "i16.png", "huge.png"} | BAD


def test_folder_one_row_per_file_errors_only_for_bad_ones(checkpoint, folder, tmp_path, capsys):
    out = tmp_path / "preds.csv"
    code = main(["--checkpoint", str(checkpoint), "--images", str(folder), "--out", str(out),
                 "--batch-size", "4"])
    table = pd.read_csv(out, keep_default_na=False)
    names = [Path(p).name for p in table["path"]]
    assert sorted(names) == sorted(_expected_names(folder))  # once each, nothing else
    assert table["path"].tolist() == [str(p) for p in find_images([folder])]  # input order
    failed = table[table["error"] != ""]
    assert set(failed["path"].map(lambda p: Path(p).name)) == BAD
    assert code == len(BAD) == 6
    for row in failed.itertuples():
        assert row.probability == "" and row.prediction == "", row
        assert Path(row.path).name in row.error, row.error  # the error names the file
    good = table[table["error"] == ""]
    prob = good["probability"].astype(float)
    assert prob.between(0, 1).all() and prob.nunique() > 1  # real X-rays: often saturated
    assert (good["prediction"] == np.where(prob >= 0.4, "Pneumonia", "Normal")).all()
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"{len(table)} files: {len(good)} predicted, 6 failed; "
                           f"threshold 0.400 (validation-chosen"), line


def test_probabilities_match_the_evaluation_pipeline(checkpoint, folder):
    """Same numbers as utils.evaluation.metrics.predict on a CXRDataset with the model's transform."""
    from torch.utils.data import DataLoader

    from utils.training.checkpoint import load_model
    from utils.data.dataset import CXRDataset, collate
    from utils.evaluation.metrics import predict
    from utils.data.transforms import build_transform

    files = [p for p in find_images([folder]) if p.name not in BAD]
    table = predict_files(checkpoint, files, device="cpu", progress=False, batch_size=5)
    model, ckpt = load_model(checkpoint, device="cpu")
    manifest = pd.DataFrame({"path": [str(p) for p in files], "patient_id": "x", "label": 0})
    transform = build_transform("none", 32, ckpt["mean"], ckpt["std"], boxes=False)
    loader = DataLoader(CXRDataset(manifest, ["Pneumonia"], transform), batch_size=3,
                        collate_fn=collate)
    expected = predict(model, loader, "cpu").probs[:, 0]
    np.testing.assert_allclose(table["probability"].to_numpy(float), expected, atol=1e-5)


def test_subprocess_exit_code_is_the_number_of_failures(checkpoint, folder, tmp_path):
    files = [folder / "generated" / n for n in ("empty.png", "text.png", "i16.png")]
    proc = subprocess.run([sys.executable, "-m", "utils.evaluation.predict", "--checkpoint",
                           str(checkpoint), "--images", *map(str, files), "--out",
                           str(tmp_path / "p.csv"), "--device", "cpu"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr
    assert "3 files: 1 predicted, 2 failed" in proc.stdout
    assert "failed:" in proc.stderr and "empty.png" in proc.stderr
    assert len(pd.read_csv(tmp_path / "p.csv")) == 3


def test_threshold_comes_from_the_checkpoint(checkpoint, folder, tmp_path):
    files = [p for p in find_images([folder]) if p.name not in BAD | {"huge.png"}]
    copy = tmp_path / "best.pt"
    shutil.copy(checkpoint, copy)
    probs = predict_files(copy, files, progress=False)["probability"].to_numpy()
    middle = float(probs.min() + probs.max()) / 2
    update_checkpoint(copy, threshold=middle)
    table = predict_files(copy, files, progress=False)
    assert table.attrs["threshold"] == middle
    positive = table["prediction"] == "Pneumonia"
    assert positive.tolist() == (probs >= middle).tolist()
    assert 1 <= positive.sum() < len(files)
    ckpt = load_checkpoint(copy)
    del ckpt["threshold"]
    torch.save(ckpt, copy)
    with pytest.warns(UserWarning, match="no validation-chosen threshold"):
        table = predict_files(copy, files, progress=False)
    assert table.attrs["threshold"] == 0.5 and "evaluate the run" in table.attrs["threshold_note"]


def test_tta_follows_the_threshold_by_default(checkpoint, folder, tmp_path):
    """A threshold chosen on TTA-averaged probabilities is applied to TTA probabilities."""
    import warnings

    files = [p for p in find_images([folder]) if p.name not in BAD | {"huge.png"}][:6]
    copy = tmp_path / "best.pt"
    shutil.copy(checkpoint, copy)
    plain = predict_files(copy, files, progress=False)["probability"].to_numpy()
    with pytest.warns(UserWarning, match="chosen on probabilities without TTA"):
        with_tta = predict_files(copy, files, progress=False, tta=True)
    assert not np.allclose(with_tta["probability"].to_numpy(), plain)  # TTA moves them
    update_checkpoint(copy, threshold_tta=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        default = predict_files(copy, files, progress=False)
    np.testing.assert_allclose(default["probability"], with_tta["probability"], atol=1e-6)
    assert "with TTA" in default.attrs["threshold_note"]
    with pytest.warns(UserWarning, match="chosen on probabilities with TTA"):
        predict_files(copy, files, progress=False, tta=False)


def test_cam_overlays_one_per_readable_image(checkpoint, folder, tmp_path):
    src = tmp_path / "in"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    wide = np.tile(np.arange(300, dtype=np.uint8), (100, 1))  # 300×100: aspect must survive
    for k, name in enumerate(("a/y.png", "a/x.png", "b/x.png", "a/y.jpg")):
        Image.fromarray(np.roll(wide, 37 * k, axis=1)).save(src / name)  # all different
    (src / "a" / "bad.png").write_bytes(b"")
    (src / "b" / "link.png").symlink_to(src / "a" / "x.png")  # named as linked, not as target
    cams = src / "cams"  # inside the input folder: its PNGs must never be predicted on
    for _ in range(2):
        code = main(["--checkpoint", str(checkpoint), "--images", str(src), "--out",
                     str(tmp_path / "p.csv"), "--cam", str(cams)])
        assert code == 1
    table = pd.read_csv(tmp_path / "p.csv", keep_default_na=False)
    assert len(table) == 6
    written = sorted(p.name for p in cams.iterdir())
    assert written == sorted(Path(c).name for c in table["cam"] if c)
    assert written == ["a__x_cam.png", "a__y.jpg_cam.png", "a__y.png_cam.png", "b__link_cam.png",
                       "b__x_cam.png"]
    with Image.open(cams / "a__x_cam.png") as im:
        assert im.size == (300, 100) and im.mode == "RGB"  # the image's own size and aspect
        written_x = np.asarray(im)
    # the same pixels as utils.evaluation.cam on the model input, laid over the image itself
    from utils.evaluation.cam import CamExplainer, overlay
    from utils.training.checkpoint import load_model
    from utils.data.images import read_image
    from utils.data.transforms import build_transform

    model, ckpt = load_model(checkpoint, device="cpu")
    tensor = build_transform("none", 32, ckpt["mean"], ckpt["std"], boxes=False)(
        image=read_image(src / "a" / "x.png"))["image"]
    with CamExplainer(model) as cam:
        heat = cam(tensor[None])[0]
    assert np.abs(written_x.astype(int) - overlay(read_image(src / "a" / "x.png"), heat)).max() <= 1
    assert table.loc[table["path"].str.endswith("bad.png"), "cam"].item() == ""


def test_multilabel_checkpoint_scores_the_pneumonia_column(tmp_path, folder):
    from utils.data.nih import NIH_FINDINGS
    from utils.models.registry import create_model

    model = create_model("simple_cnn", 14, pretrained=False, image_size=32)
    torch.save({"model_name": "simple_cnn", "model_state": model.state_dict(),
                "num_classes": 14, "class_names": list(NIH_FINDINGS), "input_size": 32,
                "mean": 0.5, "std": 0.25, "threshold": 0.5, "config": {}},
               tmp_path / "nih.pt")
    table = predict_files(tmp_path / "nih.pt", [folder / "generated" / "i16.png"],
                          progress=False)
    assert [c for c in table.columns if c.startswith("p_")] == [f"p_{n}" for n in NIH_FINDINGS]
    assert table["probability"].item() == table["p_Pneumonia"].item()
    assert table["prediction"].item() in ("Pneumonia", "No Pneumonia")


def test_find_images_walks_folders_and_keeps_explicit_files(folder, tmp_path):
    found = find_images([folder, folder / "generated" / "i16.png"])
    names = [p.name for p in found]
    assert "scan0001" in names and names.count("i16.png") == 1
    assert not {"notes.txt", ".hidden.png", ".huge.png.abc123.tmp"} & set(names)
    (tmp_path / "link.dcm").symlink_to(folder / "dicom" / "scan0001")
    both = find_images([folder / "dicom", tmp_path / "link.dcm", folder / "dicom" / "m1.dcm"])
    assert [p.name for p in both] == ["1.2.840.113619.5", "m1.dcm", "scan0001", "link.dcm"]  # links count, repeats not
    odd = tmp_path / "image.weird"
    odd.write_bytes(b"x")
    assert find_images([odd]) == [odd]  # given by name: read (and fail) rather than ignored
    with pytest.raises(FileNotFoundError, match="nowhere"):
        find_images([tmp_path / "nowhere"])


def test_usage_errors_exit_2_without_a_csv(checkpoint, tmp_path, capsys):
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "cut.pt").write_bytes(checkpoint.read_bytes()[:5000])  # interrupted copy
    cases = [["--checkpoint", str(tmp_path / "missing.pt"), "--images", str(tmp_path)],
             ["--checkpoint", str(tmp_path / "cut.pt"), "--images", str(checkpoint)],
             ["--checkpoint", str(checkpoint), "--images", str(tmp_path / "empty_dir")],
             ["--checkpoint", str(checkpoint), "--images", str(tmp_path / "nope")]]
    for argv in cases:
        with pytest.raises(SystemExit) as exc:
            main([*argv, "--out", str(tmp_path / "p.csv")])
        assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "missing.pt not found" in err and "no image files" in err and "nope" in err
    assert "corrupt or incomplete checkpoint" in err and "cut.pt" in err
    assert not (tmp_path / "p.csv").exists()
