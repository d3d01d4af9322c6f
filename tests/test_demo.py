"""utils.data.demo: the three Kaggle layouts with the real headers, DICOMs that read back the
right way up, boxes on the opacities, determinism, learnability, and ensure_demo's caching."""
from __future__ import annotations

import functools
import gzip
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from conftest import shared_path
from utils.data import demo
from utils.data.demo import MARKER, ensure_demo, make_demo
from utils.data.images import read_image

PX = 128  # smaller than the default 256: the same code paths, half the test time
KERMANY_NAME = {"NORMAL": re.compile(r"^(NORMAL2-)?IM-(\d{4})-0001(-\d{4})?\.jpeg$"),
                "PNEUMONIA": re.compile(r"^person(\d+)_(bacteria|virus)_\d+\.jpeg$")}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return make_demo(tmp_path_factory.mktemp("demo"), seed=0, image_px=PX)


def _first_line(path: Path) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:
        return fh.readline().rstrip("\n")


def _kermany_patient(cls: str, name: str) -> str:
    m = KERMANY_NAME[cls].match(name)
    assert m, f"{cls}/{name} does not look like a Kermany file name"
    return f"{m.group(1) or ''}{m.group(2)}" if cls == "NORMAL" else f"person{m.group(1)}"


def test_kermany_layout_counts_and_patients(root):
    base = root / "chest_xray"
    assert (base / MARKER).read_text().startswith("SYNTHETIC DEMO DATA")
    patients: dict[str, set[str]] = {}
    for split, counts in {"train": (140, 280), "val": (8, 8), "test": (130, 170)}.items():
        for cls, n in zip(("NORMAL", "PNEUMONIA"), counts):
            files = sorted(p.name for p in (base / split / cls).iterdir())
            assert len(files) == n, (split, cls)
            ids = [_kermany_patient(cls, f) for f in files]
            patients.setdefault(split, set()).update(f"{cls}:{i}" for i in ids)
            if split == "train":  # several images per patient: patient-level splits matter
                assert len(set(ids)) < len(ids) - 5, cls
    assert not patients["train"] & patients["test"]
    assert not patients["train"] & patients["val"] and not patients["val"] & patients["test"]
    assert any("_virus_" in p.name for p in (base / "train" / "PNEUMONIA").iterdir())
    info = json.loads((root / ".complete").read_text())
    assert info["counts"]["chest_xray"] == 736 and info["version"] == demo.DEMO_VERSION


def test_rsna_layout_matches_the_real_csvs(root):
    base = root / "rsna-pneumonia-detection-challenge"
    assert (base / MARKER).exists()
    labels_csv = base / "stage_2_train_labels.csv"
    assert _first_line(labels_csv) == _first_line(shared_path("rsna", "stage_2_train_labels.csv"))
    info_csv = base / "stage_2_detailed_class_info.csv"
    real_info = shared_path("rsna", "stage_2_detailed_class_info_partial.csv")
    assert _first_line(info_csv) == _first_line(real_info)
    labels, info = pd.read_csv(labels_csv), pd.read_csv(info_csv)
    assert set(info["class"]) == set(pd.read_csv(real_info)["class"])
    assert len(info) == len(labels) and (info.patientId.values == labels.patientId.values).all()
    files = {p.stem for p in (base / "stage_2_train_images").glob("*.dcm")}
    assert len(files) == 750 and set(labels.patientId) == files
    per_patient = labels.groupby("patientId").Target.agg(["max", "size"])
    assert 0.25 <= per_patient["max"].mean() <= 0.35
    assert set(per_patient.loc[per_patient["max"] == 1, "size"]) == {1, 2}
    neg = labels[labels.Target == 0]
    assert neg[["x", "y", "width", "height"]].isna().all().all()
    assert (info.loc[labels.Target == 1, "class"] == "Lung Opacity").all()
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
                        labels.patientId.iloc[0])


def test_nih_layout_matches_the_real_csvs(root):
    base = root / "nih"
    assert (base / MARKER).exists()
    real_entry = shared_path("nih", "Data_Entry_2017_v2020.csv.gz")
    assert _first_line(base / "Data_Entry_2017.csv") == _first_line(real_entry)
    real_bbox = shared_path("nih", "BBox_List_2017.csv.gz")
    assert _first_line(base / "BBox_List_2017.csv") == _first_line(real_bbox)
    entry, real = pd.read_csv(base / "Data_Entry_2017.csv"), pd.read_csv(real_entry, nrows=3000)
    assert list(entry.columns) == list(real.columns) and len(entry) == 800
    assert entry.dtypes.to_dict() == real.dtypes.to_dict()
    real_labels = set(real["Finding Labels"].str.split("|").explode())
    ours = entry["Finding Labels"].str.split("|").explode()
    assert set(ours) <= real_labels and {"Pneumonia", "Cardiomegaly", "Effusion"} <= set(ours)
    assert len(set(ours)) >= 10  # the rare findings occur too
    images = {p.name: p for p in base.glob("images_*/images/*.png")}
    assert set(images) == set(entry["Image Index"])
    assert len({p.parent.parent.name for p in images.values()}) == 2
    assert entry.groupby("Patient ID").size().max() >= 3  # follow-ups
    assert all(re.fullmatch(r"\d{8}_\d{3}\.png", n) for n in images)
    bbox = pd.read_csv(base / "BBox_List_2017.csv")
    assert list(bbox.columns) == list(pd.read_csv(real_bbox, nrows=3).columns)
    assert set(bbox["Finding Label"]) <= set(pd.read_csv(real_bbox)["Finding Label"])
    assert set(bbox["Image Index"]) <= set(entry["Image Index"])
    train = (base / "train_val_list.txt").read_text().split()
    test = (base / "test_list.txt").read_text().split()
    assert sorted(train + test) == sorted(entry["Image Index"]) and 0.2 < len(test) / 800 < 0.5
    pid = dict(zip(entry["Image Index"], entry["Patient ID"]))
    assert not {pid[n] for n in train} & {pid[n] for n in test}


def _regions(img: np.ndarray) -> tuple[float, float]:
    """Mean of both lung fields and of the mediastinum, at fixed image fractions."""
    h, w = img.shape
    rows = slice(int(0.3 * h), int(0.5 * h))
    lungs = np.r_[img[rows, int(.22 * w):int(.34 * w)].ravel(),
                  img[rows, int(.66 * w):int(.78 * w)].ravel()]
    return float(lungs.mean()), float(img[rows, int(.48 * w):int(.52 * w)].mean())


def test_dicoms_read_back_the_right_way_up(root):
    rsna = root / "rsna-pneumonia-detection-challenge" / "stage_2_train_images"
    files = sorted(rsna.glob("*.dcm"))
    kinds: dict[tuple[str, bool], list[float]] = {}
    for path in files[:60]:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert (ds.Modality, ds.BodyPartExamined, ds.BitsStored) == ("CR", "CHEST", 8)
        assert ds.ViewPosition in ("PA", "AP") and ds.PatientID == path.stem
        img = read_image(path)
        assert img.shape == (PX, PX) and img.dtype == np.uint8
        lung, mediastinum = _regions(img)
        assert lung + 40 < mediastinum, f"{path.name} ({ds.PhotometricInterpretation}) is inverted"
        key = (ds.PhotometricInterpretation, ds.file_meta.TransferSyntaxUID.is_compressed)
        kinds.setdefault(key, []).append(float(img.mean()))
    assert set(kinds) == {(m, c) for m in ("MONOCHROME1", "MONOCHROME2") for c in (True, False)}
    means = [np.mean(v) for v in kinds.values()]
    assert max(means) - min(means) < 15  # MONOCHROME1 files look like the others


def _box_contrast(img: np.ndarray, box) -> float:
    """Mean inside the box minus the mean of its mirror image across the midline."""
    h, w = img.shape
    x, y, bw, bh = box
    x0, y0, x1, y1 = round(x), round(y), round(x + bw), round(y + bh)
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h, f"box {box} outside {w}×{h}"
    return float(img[y0:y1, x0:x1].mean() - img[y0:y1, w - x1:w - x0].mean())


def test_boxes_lie_inside_and_on_the_opacity(root):
    contrasts = []
    kb = pd.read_csv(root / "chest_xray" / "boxes.csv")
    assert list(kb.columns) == ["path", "x", "y", "w", "h"]
    assert set(kb.path.str.split("/").str[1]) == {"PNEUMONIA"} and len(kb) == 458
    for r in kb.itertuples():
        img = read_image(root / "chest_xray" / r.path)
        contrasts.append(_box_contrast(img, (r.x, r.y, r.w, r.h)))
    rsna = root / "rsna-pneumonia-detection-challenge"
    labels = pd.read_csv(rsna / "stage_2_train_labels.csv")
    single = labels[labels.Target == 1].groupby("patientId").filter(lambda g: len(g) == 1)
    for r in single.itertuples():
        img = read_image(rsna / "stage_2_train_images" / f"{r.patientId}.dcm")
        contrasts.append(_box_contrast(img, (r.x, r.y, r.width, r.height)))
    nih = root / "nih"
    bbox = pd.read_csv(nih / "BBox_List_2017.csv")
    for r in bbox.itertuples():
        img = read_image(next(nih.glob(f"images_*/images/{r._1}")))
        c = _box_contrast(img, (r._3, r.y, r.w, r._6))
        if r._2 == "Pneumonia":
            contrasts.append(c)
    contrasts = np.array(contrasts)
    assert (contrasts > 0).mean() > 0.95 and np.median(contrasts) > 10


def test_same_seed_same_bytes(tmp_path):
    def digest(root: Path) -> dict[str, str]:
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".complete"}

    a = digest(make_demo(tmp_path / "a", seed=3, image_px=64, scale=0.1))
    b = digest(make_demo(tmp_path / "b", seed=3, image_px=64, scale=0.1))
    c = digest(make_demo(tmp_path / "c", seed=4, image_px=64, scale=0.1))
    assert a == b and len(a) > 60
    assert any(name.endswith(".dcm") for name in a) and any(name.endswith(".png") for name in a)
    changed = [n for n in a if n.endswith((".jpeg", ".png", ".dcm")) and a[n] != c.get(n)]
    assert len(changed) > 30


def test_pneumonia_is_learnable_but_not_trivial(root):
    import cv2
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    def load(split: str) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for label, cls in enumerate(("NORMAL", "PNEUMONIA")):
            for path in sorted((root / "chest_xray" / split / cls).iterdir()):
                small = cv2.resize(read_image(path, max_side=64), (16, 16),
                                   interpolation=cv2.INTER_AREA)
                xs.append(small.ravel() / 255.0)
                ys.append(label)
        return np.array(xs), np.array(ys)

    (xtr, ytr), (xte, yte) = load("train"), load("test")
    mean, std = xtr.mean(0), xtr.std(0) + 1e-6
    model = LogisticRegression(C=0.1, max_iter=2000).fit((xtr - mean) / std, ytr)
    auroc = roc_auc_score(yte, model.predict_proba((xte - mean) / std)[:, 1])
    assert 0.8 < auroc < 0.995, auroc
    bright = roc_auc_score(yte, xte.mean(1))  # overall brightness alone must not give it away
    assert bright < 0.8, bright


def test_make_demo_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="image_px"):
        make_demo(tmp_path, image_px=8)
    with pytest.raises(ValueError, match="scale"):
        make_demo(tmp_path, scale=0)


def test_ensure_demo_generates_once_and_repairs(tmp_path, monkeypatch, caplog):
    calls = []
    tiny = functools.partial(make_demo, image_px=48, scale=0.05)
    monkeypatch.setattr(demo, "make_demo", lambda r: calls.append(r) or tiny(r))
    root = tmp_path / "demo"
    with caplog.at_level("INFO", logger="utils.data.demo"):
        assert ensure_demo(root) == root
    assert "SYNTHETIC" in caplog.text and str(root) in caplog.text
    assert (root / ".complete").exists() and len(calls) == 1
    assert not list(tmp_path.glob(".demo.building-*"))
    ensure_demo(root)
    assert len(calls) == 1  # reused
    (root / ".complete").unlink()  # a crash before the marker: regenerated
    ensure_demo(root)
    assert len(calls) == 2 and (root / ".complete").exists()
    (root / ".complete").write_text(json.dumps({"version": -1}))  # older generator
    ensure_demo(root)
    assert len(calls) == 3
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.docx").write_text("precious")
    with pytest.raises(FileExistsError, match="thesis.docx"):
        ensure_demo(foreign)
    assert (foreign / "thesis.docx").exists()
