"""RSNA: splits group images by their NIH patient (RSNA's patientId is one per image), the
results say which grouping was used, and 01_preprocessing's PNG conversion is what the
manifest reads once it is complete."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from utils.data.demo import make_demo
from utils.data.convert import dicom_to_png, png_conversion_status
from utils.data.images import read_image
from utils.data.rsna import MAPPING_NAME, PNG_DIR, nih_patient_of, rsna_manifest
from utils.data.splits import assign_splits

RSNA = "rsna-pneumonia-detection-challenge"


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    return make_demo(tmp_path_factory.mktemp("demo"), seed=0, image_px=32, scale=0.5)


def _nih_patient_per_image(root: Path) -> pd.Series:
    """RSNA image id → its NIH patient, read straight from the mapping JSON."""
    entries = json.loads((root / RSNA / MAPPING_NAME).read_text())
    return pd.Series({e["subset_img_id"]: nih_patient_of(e["img_id"]) for e in entries})


def test_images_of_one_nih_patient_land_in_one_split(demo_root):
    manifest = rsna_manifest(demo_root / RSNA)
    nih = manifest["image_id"].map(_nih_patient_per_image(demo_root)).fillna("")
    shared = nih[nih.duplicated(keep=False) & (nih != "")]
    assert shared.nunique() >= 5  # enough NIH patients with 2+ RSNA images to mean something
    for seed in (0, 1, 42):
        out = assign_splits(manifest, 0.15, 0.15, seed=seed)
        splits = out.loc[shared.index, "split"].groupby(shared).nunique()
        assert (splits == 1).all(), f"seed {seed}: NIH patients across splits: " \
                                    f"{splits[splits > 1].index.tolist()}"
    assert manifest.attrs["grouping"] == "nih_patient"
    mapped = nih != ""
    assert (manifest.loc[mapped, "patient_id"] == "nih:" + nih[mapped]).all()
    assert (manifest.loc[~mapped, "patient_id"] == manifest.loc[~mapped, "image_id"]).all()


def test_without_the_mapping_each_image_is_its_own_patient_and_says_so(demo_root, tmp_path):
    bare = tmp_path / RSNA
    bare.mkdir()
    for item in (demo_root / RSNA).iterdir():
        if item.name != MAPPING_NAME:
            (bare / item.name).symlink_to(item)
    with pytest.warns(UserWarning, match="RSNA splits by image, not by patient"):
        manifest = rsna_manifest(bare)
    assert manifest.attrs["grouping"] == "image"
    assert (manifest["patient_id"] == manifest["image_id"]).all()
    assert rsna_manifest(demo_root / RSNA, mapping=None).attrs["grouping"] == "image"


def test_results_record_the_grouping(demo_root, tmp_path, one_torch_thread):
    import torch

    from utils.config import make_config
    from utils.study.experiment import run_experiment
    from utils.runtime import RunContext

    cfg = make_config({"dataset": "rsna", "data_root": str(demo_root), "model": "simple_cnn",
                       "step": "grouping_check", "reports_dir": str(tmp_path / "reports"),
                       "checkpoint_dir": str(tmp_path / "ckpt")}, "smoke")
    ctx = RunContext(device=torch.device("cpu"), data_root=demo_root, synthetic=True,
                     repo_root=Path.cwd(), environment={})
    exp = run_experiment(cfg, ctx)
    saved = json.loads((tmp_path / "reports" / "results" / "grouping_check.json").read_text())
    assert exp.results["data"]["grouping"] == saved["data"]["grouping"] == "nih_patient"


# --- 01_preprocessing's PNGs --------------------------------------------------------------

def _copy_rsna(demo_root: Path, dst: Path) -> Path:
    shutil.copytree(demo_root / RSNA, dst / RSNA)
    return dst / RSNA


def test_a_complete_png_conversion_is_what_the_manifest_reads(demo_root, tmp_path, capsys):
    root = _copy_rsna(demo_root, tmp_path)
    dicom = rsna_manifest(root)
    assert all(p.endswith(".dcm") for p in dicom["path"])
    assert "no PNG conversion" in dicom.attrs["images"]
    # an interrupted conversion (no marker yet) is not used, and the manifest says why
    dicoms = sorted((root / "stage_2_train_images").iterdir())
    part = dicom_to_png(root / "stage_2_train_images", root / PNG_DIR, workers=0)
    (root / PNG_DIR / ".conversion.json").unlink()
    (root / PNG_DIR / (dicoms[0].stem + ".png")).unlink()
    assert len(part) == len(dicoms)
    half = rsna_manifest(root)
    assert all(p.endswith(".dcm") for p in half["path"])
    assert "did not finish" in half.attrs["images"]
    # finished (the resume converts only the missing file): the PNGs, same rows and pixels
    table = dicom_to_png(root / "stage_2_train_images", root / PNG_DIR, workers=0)
    assert (table.status == "converted").sum() == 1
    png = rsna_manifest(root)
    capsys.readouterr()
    assert all(p.endswith(".png") and PNG_DIR in p for p in png["path"])
    assert png.attrs["images"].startswith("PNGs converted by 01_preprocessing")
    assert (png["image_id"] == dicom["image_id"]).all()
    assert (png["patient_id"] == dicom["patient_id"]).all()
    assert png[["width", "height"]].equals(dicom[["width", "height"]])
    for a, b in list(zip(dicom["path"], png["path"]))[:5]:
        assert (read_image(a) == read_image(b)).all()
    from utils.data.dataset import test_fingerprint  # the same test images, ranked together

    assert test_fingerprint(assign_splits(dicom, 0.15, 0.15, 42)) == \
        test_fingerprint(assign_splits(png, 0.15, 0.15, 42))


def test_a_changed_dicom_makes_the_conversion_stale(demo_root, tmp_path):
    root = _copy_rsna(demo_root, tmp_path)
    src, dst = root / "stage_2_train_images", root / PNG_DIR
    dicom_to_png(src, dst, workers=0)
    assert png_conversion_status(src, dst) == (True, "")
    first = sorted(src.iterdir())[0]
    os.utime(first, ns=(first.stat().st_atime_ns, first.stat().st_mtime_ns + 10**9))
    complete, why = png_conversion_status(src, dst)
    assert not complete and "changed since the conversion" in why
    assert all(p.endswith(".dcm") for p in rsna_manifest(root)["path"])
