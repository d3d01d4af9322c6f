"""Kermany / RSNA / NIH parsers and discovery: real label files and small trees in tmp_path."""
from __future__ import annotations

import re
import shutil
import sys
import types
import warnings
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from conftest import shared_path
from utils.data import discover
from utils.data.discover import (DataNotFoundError, find_sources, is_synthetic,
                                 resolve_data_root)
from utils.data.kermany import MANIFEST_COLUMNS, kermany_manifest, kermany_patient_id
from utils.data.nih import (NIH_FINDINGS, nih_boxes, nih_files_manifest, nih_labels,
                            nih_manifest)
from utils.data.rsna import read_rsna_class_info, read_rsna_labels, rsna_manifest


def write_image(path: Path, h: int = 40, w: int = 30) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((h, w), 128, np.uint8))
    return path


def kermany_tree(base: Path, names: dict[str, list[str]]) -> Path:
    """names: {"train/NORMAL": [...file names...], ...}"""
    for folder, files in names.items():
        (base / folder).mkdir(parents=True, exist_ok=True)
        for name in files:
            write_image(base / folder / name)
    return base


SMALL_KERMANY = {
    "train/NORMAL": ["IM-0001-0001.jpeg", "NORMAL2-IM-0001-0001.jpeg"],
    "train/PNEUMONIA": ["person1_bacteria_1.jpeg", "person1_virus_2.jpeg"],
    "val/NORMAL": ["IM-0002-0001.jpeg"], "val/PNEUMONIA": ["person2_bacteria_3.jpeg"],
    "test/NORMAL": ["IM-0003-0001-0002.jpeg"], "test/PNEUMONIA": ["person3_virus_4_1.jpeg"],
}


# --- Kermany ----------------------------------------------------------------------------

@pytest.mark.parametrize("name, patient", [
    ("person123_bacteria_456.jpeg", "person123"), ("person447_virus_921_1.jpeg", "person447"),
    ("IM-0123-0001.jpeg", "IM-0123"), ("IM-0429-0001-0002.jpeg", "IM-0429"),
    ("NORMAL2-IM-0123-0001.jpeg", "NORMAL2-IM-0123"), ("scan_0001.jpeg", None)])
def test_kermany_patient_id(name, patient):
    assert kermany_patient_id(name) == patient


def test_kermany_real_train_folder():
    root = shared_path("kermany224", "train").parent
    m = kermany_manifest(root)
    assert list(m.columns) == MANIFEST_COLUMNS
    assert m.label.value_counts().to_dict() == {0: 1341, 1: 3875}
    assert set(m.split) == {""} and set(m.source) == {"kermany"} and not m.synthetic.any()
    assert m.patient_id.notna().all() and m.path.map(lambda p: Path(p).is_file()).all()
    # a patient has one diagnosis, and many patients have several images
    assert m.groupby("patient_id").label.nunique().max() == 1
    assert 2000 < m.patient_id.nunique() < len(m)
    assert (m.boxes.map(len) == 0).all() and (m.width == 0).all()


def test_kermany_kaggle_zip_layout(tmp_path):
    """Doubled chest_xray/chest_xray and __MACOSX are ignored; official test kept."""
    outer = kermany_tree(tmp_path / "chest_xray", SMALL_KERMANY)
    kermany_tree(outer / "chest_xray", SMALL_KERMANY)
    kermany_tree(tmp_path / "__MACOSX" / "chest_xray", {"train/NORMAL": ["._IM-0001-0001.jpeg"]})
    m = kermany_manifest(tmp_path)
    assert len(m) == 8 and all("/chest_xray/chest_xray/" not in p for p in m.path)
    assert m.groupby("split").size().to_dict() == {"": 6, "test": 2}
    assert sorted(m.patient_id.unique()) == ["IM-0001", "IM-0002", "IM-0003", "NORMAL2-IM-0001",
                                             "person1", "person2", "person3"]


def test_kermany_bad_names_and_empty_folders(tmp_path):
    kermany_tree(tmp_path, {"train/NORMAL": ["scan_1.jpeg", "IM-0001-0001.jpeg"],
                            "train/PNEUMONIA": ["person1_bacteria_1.jpeg"]})
    with pytest.raises(ValueError, match=r"1 Kermany file name.*scan_1\.jpeg"):
        kermany_manifest(tmp_path)
    (tmp_path / "train/NORMAL/scan_1.jpeg").unlink()
    for f in (tmp_path / "train/PNEUMONIA").iterdir():
        f.unlink()
    with pytest.raises(FileNotFoundError, match=r"train/PNEUMONIA holds no images"):
        kermany_manifest(tmp_path)


def test_kermany_boxes_csv(tmp_path):
    base = kermany_tree(tmp_path / "chest_xray", SMALL_KERMANY)
    write_image(base / "train/PNEUMONIA/person1_bacteria_1.jpeg", h=50, w=60)
    pd.DataFrame({"path": ["train/PNEUMONIA/person1_bacteria_1.jpeg"] * 2,
                  "x": [1, 10], "y": [2, 20], "w": [3, 30], "h": [4, 25]}).to_csv(
        base / "boxes.csv", index=False)
    m = kermany_manifest(tmp_path).set_index("path")
    row = m.loc[str(base / "train/PNEUMONIA/person1_bacteria_1.jpeg")]
    assert row.boxes == [[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 25.0]]
    assert (row.width, row.height) == (60, 50)
    assert m.boxes.map(len).sum() == 2
    with open(base / "boxes.csv", "a") as fh:
        fh.write("train/PNEUMONIA/gone.jpeg,1,1,1,1\n")
    with pytest.raises(FileNotFoundError, match=r"1 of 3 labelled image\(s\) are missing.*gone"):
        kermany_manifest(tmp_path)
    with pytest.warns(UserWarning, match="skipping 1"):
        m = kermany_manifest(tmp_path, on_bad_image="skip")
    assert m.attrs["skipped"] == [str(base / "train/PNEUMONIA/gone.jpeg")]


# --- RSNA -------------------------------------------------------------------------------

def test_rsna_real_labels():
    labels = read_rsna_labels(shared_path("rsna", "stage_2_train_labels.csv"))
    assert len(labels) == 26684 and labels.patient_id.is_unique
    assert labels.label.sum() == 6012 and labels.boxes.map(len).sum() == 9555
    assert ((labels.boxes.map(len) > 0) == (labels.label == 1)).all()
    info = read_rsna_class_info(shared_path("rsna", "stage_2_detailed_class_info_partial.csv"))
    assert len(info) == 26605 and set(info) == {"Lung Opacity", "Normal",
                                                "No Lung Opacity / Not Normal"}
    joined = labels.set_index("patient_id").join(info.rename("cls"), how="inner")
    assert (joined.label == (joined.cls == "Lung Opacity")).all()


def test_rsna_real_labels_without_images_is_a_clear_error():
    root = shared_path("rsna")
    with pytest.raises(FileNotFoundError, match="stage_2_train_images does not exist"):
        rsna_manifest(root)


def rsna_tree(root: Path) -> Path:
    rows = ["patientId,x,y,width,height,Target", "a,,,,,0", "b,10,20,30,40,1",
            "b,50,60,10,10,1", "c,,,,,0"]
    root.mkdir(parents=True)
    (root / "stage_2_train_labels.csv").write_text("\n".join(rows) + "\n")
    (root / "stage_2_detailed_class_info.csv").write_text(
        "patientId,class\na,Normal\nb,Lung Opacity\nb,Lung Opacity\n")
    for pid in "abc":
        write_image(root / "png" / f"{pid}.png", h=64, w=48)
    return root


def test_rsna_manifest_png_dir_and_missing(tmp_path):
    root = rsna_tree(tmp_path / "rsna-pneumonia-detection-challenge")
    (root / "stage_2_train_images").mkdir()
    m = rsna_manifest(tmp_path, image_dir="png").set_index("patient_id")
    assert m.label.to_dict() == {"a": 0, "b": 1, "c": 0}
    assert m.loc["b", "boxes"] == [[10.0, 20.0, 30.0, 40.0], [50.0, 60.0, 10.0, 10.0]]
    assert (m.loc["b", "width"], m.loc["b", "height"]) == (48, 64) and m.loc["a", "width"] == 0
    assert m.class_info.to_dict() == {"a": "Normal", "b": "Lung Opacity", "c": ""}
    (root / "png" / "c.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 3 labelled image\(s\) are missing.*'c'"):
        rsna_manifest(root, image_dir="png")
    with pytest.warns(UserWarning, match="skipping 1"):
        m = rsna_manifest(root, image_dir="png", on_bad_image="skip")
    assert list(m.patient_id) == ["a", "b"] and m.attrs["skipped"] == ["c"]


def test_rsna_box_frame_comes_from_the_dicom(tmp_path):
    """Converted PNGs may be smaller; boxes stay in the DICOM's pixel frame."""
    dcm = shared_path("dicom", "cr_chest_monochrome2_jpeg.dcm")
    root = rsna_tree(tmp_path / "rsna")
    (root / "stage_2_train_images").mkdir()
    for pid in "abc":
        shutil.copy(dcm, root / "stage_2_train_images" / f"{pid}.dcm")
    for image_dir in (None, "png"):
        m = rsna_manifest(root, image_dir=image_dir).set_index("patient_id")
        assert (m.loc["b", "width"], m.loc["b", "height"]) == (1024, 1024)
    assert m.loc["b", "path"].endswith("png/b.png")


def test_rsna_bad_csvs(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("patientId,x,y,w,h,Target\na,,,,,0\n")
    with pytest.raises(ValueError, match=r"labels\.csv: missing required column\(s\) "
                                         r"\['width', 'height'\]; columns found"):
        read_rsna_labels(csv)
    csv.write_text("patientId,x,y,width,height,Target\na,,,,,1\n")
    with pytest.raises(ValueError, match="Target disagrees with the box"):
        read_rsna_labels(csv)


# --- NIH --------------------------------------------------------------------------------

def test_nih_labels_real_data_entry():
    csv = shared_path("nih", "Data_Entry_2017_v2020.csv.gz")
    labels = nih_labels(csv)
    assert len(labels) == 112120 and list(labels.columns[1:15]) == NIH_FINDINGS
    assert labels.loc["00000001_000.png", "Cardiomegaly"] == 1
    first = labels.loc["00000001_001.png", NIH_FINDINGS]
    assert sorted(first[first == 1].index) == ["Cardiomegaly", "Emphysema"]
    raw = pd.read_csv(csv)
    tokens = raw["Finding Labels"].str.split("|")
    for finding in ("Pneumonia", "Hernia", "Infiltration"):  # independent count by tokens
        assert labels[finding].sum() == tokens.map(lambda t: finding in t).sum()
    assert (labels.label == labels.Pneumonia).all()
    assert labels.loc["00000001_000.png", "patient_id"] == "1"


def test_nih_images64_join():
    """The real 64×64 images join Data_Entry by file name to 14-label targets."""
    folder = shared_path("nih", "images64")
    labels = nih_labels(shared_path("nih", "Data_Entry_2017_v2020.csv.gz"))
    paths = sorted(folder.rglob("*.png"))
    m = nih_files_manifest(paths, labels)
    assert len(m) == 1000 and list(m.columns[:9]) == MANIFEST_COLUMNS
    n_findings = m[NIH_FINDINGS].sum(axis=1)
    abnormal = m.path.str.contains("/1_abnormal/")
    assert abnormal.sum() == 500 and (n_findings[abnormal] >= 1).all()
    assert (n_findings[~abnormal] == 0).mean() > 0.99
    with pytest.raises(ValueError, match=r"1 of 1001 image\(s\) have no row.*x\.png"):
        nih_files_manifest(paths + [folder / "x.png"], labels)


def test_nih_real_sample_labels_and_boxes():
    sample = nih_labels(shared_path("nih", "sample_labels.csv"))
    assert len(sample) == 5600 and sample.index.name == "Image Index"
    boxes = nih_boxes(shared_path("nih", "BBox_List_2017.csv.gz"))
    assert boxes.boxes.map(len).sum() == 984 and len(boxes) == 880
    assert boxes.loc["00013118_008.png", "boxes"][0] == pytest.approx(
        [225.084745762712, 547.019216763771, 86.7796610169491, 79.1864406779661])
    assert "Pneumonia" in set(boxes.box_labels.explode())


def nih_tree(root: Path, sample: bool = False) -> Path:
    entries = [("00000001_000.png", "Pneumonia|Effusion", 1), ("00000001_001.png", "No Finding", 1),
               ("00000002_000.png", "Hernia", 2), ("00000003_000.png", "No Finding", 3)]
    csv = pd.DataFrame({"Image Index": [e[0] for e in entries],
                        "Finding Labels": [e[1] for e in entries],
                        "Patient ID": [e[2] for e in entries]})
    folder = root / ("sample/images" if sample else "images_001/images")
    for name, *_ in entries:
        write_image(folder / name, h=32, w=32)
    if sample:
        csv.to_csv(root / "sample_labels.csv", index=False)
        return root
    csv.to_csv(root / "Data_Entry_2017.csv", index=False)
    (root / "BBox_List_2017.csv").write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,\n00000001_000.png,Pneumonia,1,2,3,4\n")
    (root / "test_list.txt").write_text("00000003_000.png\n")
    (root / "train_val_list.txt").write_text(
        "00000001_000.png\n00000001_001.png\n00000002_000.png\n")
    return root


def test_nih_manifest_full_and_sample_layouts(tmp_path):
    m = nih_manifest(nih_tree(tmp_path / "data")).set_index(
        pd.Index(["a0", "a1", "b", "c"]))
    assert m.split.to_dict() == {"a0": "", "a1": "", "b": "", "c": "test"}
    assert m.label.tolist() == [1, 0, 0, 0] and m.Effusion.tolist() == [1, 0, 0, 0]
    assert m.Hernia.tolist() == [0, 0, 1, 0] and m.patient_id.tolist() == ["1", "1", "2", "3"]
    assert m.loc["a0", "boxes"] == [[1.0, 2.0, 3.0, 4.0]]
    assert m.loc["a0", "box_labels"] == ["Pneumonia"]
    assert (m.loc["a0", "width"], m.loc["a0", "height"]) == (32, 32)
    s = nih_manifest(nih_tree(tmp_path / "kaggle" / "sample", sample=True).parent)
    assert len(s) == 4 and set(s.split) == {""} and s.path.str.contains("sample/images").all()


def test_nih_missing_images_and_bad_findings(tmp_path):
    root = nih_tree(tmp_path)
    (root / "images_001/images/00000002_000.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 4 labelled.*00000002_000\.png"):
        nih_manifest(root)
    with pytest.warns(UserWarning, match="skipping 1"):
        m = nih_manifest(root, on_bad_image="skip")
    assert len(m) == 3 and m.attrs["skipped"] == ["00000002_000.png"]
    (root / "Data_Entry_2017.csv").write_text("Image Index,Finding Labels,Patient ID\n"
                                              "x.png,Pneumonia|Covid,1\n")
    with pytest.raises(ValueError, match=r"unknown finding name\(s\) \['Covid'\]"):
        nih_manifest(root)
    (root / "Data_Entry_2017.csv").write_text("Image Index,Labels\nx.png,Pneumonia\n")
    with pytest.raises(ValueError, match=r"Data_Entry_2017\.csv: missing required column\(s\) "
                                         r"\['Finding Labels', 'Patient ID'\]; columns found: "
                                         r"\['Image Index', 'Labels'\]"):
        nih_manifest(root)


# --- discovery --------------------------------------------------------------------------

def test_find_sources_kaggle_mount_layout(tmp_path):
    kermany = kermany_tree(tmp_path / "chest-xray-pneumonia" / "chest_xray", SMALL_KERMANY)
    kermany_tree(kermany / "chest_xray", SMALL_KERMANY)
    kermany_tree(kermany / "__MACOSX", SMALL_KERMANY)
    rsna = rsna_tree(tmp_path / "rsna-pneumonia-detection-challenge")
    nih = nih_tree(tmp_path / "data")
    assert find_sources(tmp_path) == {"kermany": kermany, "nih": nih, "rsna": rsna}
    assert find_sources(tmp_path / "data") == {"nih": nih}
    assert find_sources(tmp_path / "nothing") == {}


def test_find_sources_shared_data():
    root = shared_path()
    found = find_sources(root)
    assert found == {"kermany": root / "kermany224", "nih": root / "nih", "rsna": root / "rsna"}


def test_resolve_data_root(tmp_path, monkeypatch):
    monkeypatch.delenv("CXR_DATA_ROOT", raising=False)
    assert resolve_data_root(str(tmp_path)) == (tmp_path, False)
    with pytest.raises(DataNotFoundError, match="does not exist"):
        resolve_data_root(str(tmp_path / "missing"))
    monkeypatch.setenv("CXR_DATA_ROOT", str(tmp_path))
    assert resolve_data_root("") == (tmp_path, False)
    # nothing anywhere → the demo set, announced loudly
    monkeypatch.delenv("CXR_DATA_ROOT")
    monkeypatch.setattr(discover, "KAGGLE_INPUT", tmp_path / "kaggle" / "input")
    monkeypatch.setattr(discover, "_REPO_ROOT", tmp_path / "repo")
    demo = tmp_path / "demo"
    (demo / "chest_xray").mkdir(parents=True)
    (demo / "chest_xray" / discover.DEMO_MARKER).write_text("synthetic")
    fake = types.ModuleType("utils.data.demo")  # the generator itself is tested elsewhere
    fake.ensure_demo = lambda root=None: demo
    monkeypatch.setitem(sys.modules, "utils.data.demo", fake)
    # discovery builds nothing itself: without a fallback, no data is an error naming the fix
    with pytest.raises(DataNotFoundError, match=r"no data found .*ensure_demo"):
        resolve_data_root("")
    message = re.escape(f"using the generated SYNTHETIC demo data in {demo}")
    with pytest.warns(UserWarning, match=message):
        assert resolve_data_root("", fallback=fake.ensure_demo) == (demo, True)
    with warnings.catch_warnings():  # run_all.py prints its own banner instead
        warnings.simplefilter("error")
        assert resolve_data_root("", announce=False, fallback=fake.ensure_demo) == (demo, True)
    # a Kaggle mount with a source wins over the demo
    mount = tmp_path / "kaggle" / "input"
    kermany_tree(mount / "chest-xray-pneumonia" / "chest_xray", SMALL_KERMANY)
    assert resolve_data_root("", fallback=fake.ensure_demo) == (mount, False)


def test_is_synthetic_and_not_found_message(tmp_path):
    kermany = kermany_tree(tmp_path / "chest_xray", SMALL_KERMANY)
    assert not is_synthetic(tmp_path)
    (kermany / discover.DEMO_MARKER).write_text("synthetic")
    assert is_synthetic(tmp_path) and is_synthetic(kermany / "train" / "NORMAL")
    assert kermany_manifest(tmp_path).synthetic.all()
    with pytest.raises(DataNotFoundError, match=r"'rsna' not found.*found: kermany at .*"
                                                r"python -m utils\.data\.download rsna"):
        rsna_manifest(tmp_path)
