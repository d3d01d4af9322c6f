"""Patient-level splits on every source: no leak, asked fractions, label ratio, determinism."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd
import pytest

from conftest import shared_path
from utils.data.splits import (PatientLeakError, assign_splits, cap_per_split,
                               check_no_patient_leak)


@lru_cache(maxsize=None)
def _kermany() -> pd.DataFrame:
    from utils.data.kermany import kermany_manifest
    return kermany_manifest(shared_path("kermany224", "train").parent)


@lru_cache(maxsize=None)
def _nih64() -> pd.DataFrame:
    from utils.data.nih import nih_files_manifest, nih_labels
    labels = nih_labels(shared_path("nih", "Data_Entry_2017_v2020.csv.gz"))
    m = nih_files_manifest(sorted(shared_path("nih", "images64").rglob("*.png")), labels)
    # binary target of this folder tree: "abnormal" (any finding), well balanced 500/500
    return m.assign(label=m.path.str.contains("/1_abnormal/").astype(int))


@lru_cache(maxsize=None)
def _rsna() -> pd.DataFrame:
    from utils.data.rsna import read_rsna_labels
    return read_rsna_labels(shared_path("rsna", "stage_2_train_labels.csv")).assign(split="")


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    from utils.data.demo import make_demo
    return make_demo(tmp_path_factory.mktemp("demo"), seed=0, image_px=32, scale=0.5)


def _demo(root, source: str) -> pd.DataFrame:
    from utils.data.kermany import kermany_manifest
    from utils.data.nih import nih_manifest
    from utils.data.rsna import rsna_manifest
    builders = {"kermany": (kermany_manifest, "chest_xray"),
                "rsna": (rsna_manifest, "rsna-pneumonia-detection-challenge"),
                "nih": (nih_manifest, "nih")}
    build, folder = builders[source]
    return build(root / folder)


SOURCES = {"kermany": _kermany, "nih64": _nih64, "rsna": _rsna, "demo_kermany": "kermany",
           "demo_rsna": "rsna", "demo_nih": "nih"}
# tolerance on fractions/ratios: tiny demo sets and NIH's many-image patients are coarse
TOLERANCE = {"kermany": 0.02, "nih64": 0.04, "rsna": 0.01}


@pytest.mark.parametrize("name", list(SOURCES))
def test_split_properties_per_source(name, request):
    source = SOURCES[name]
    manifest = (_demo(request.getfixturevalue("demo_root"), source) if isinstance(source, str)
                else source())
    tol = TOLERANCE.get(name, 0.08)
    out = assign_splits(manifest, val_fraction=0.15, test_fraction=0.15, seed=42)
    check_no_patient_leak(out)
    assert len(out) == len(manifest) and set(out.split) <= {"train", "val", "test"}
    official = manifest.split == "test"
    assert (out.split[official] == "test").all()  # an official test split stays test
    pool = out[~official]
    shares = pool.split.value_counts(normalize=True)
    if official.any():
        assert shares["val"] == pytest.approx(0.15, abs=tol)
    else:
        assert shares["val"] == pytest.approx(0.15, abs=tol)
        assert shares["test"] == pytest.approx(0.15, abs=tol)
    rates = out.groupby("split").label.mean()
    for split in ("train", "val"):
        assert rates[split] == pytest.approx(pool.label.mean(), abs=max(tol, 0.03))
    key = "path" if "path" in out else "patient_id"
    again = assign_splits(manifest.sample(frac=1, random_state=7), 0.15, 0.15, seed=42)
    assert again.set_index(key).split.reindex(out[key]).tolist() == out.split.tolist()
    other = assign_splits(manifest, 0.15, 0.15, seed=43)
    assert (other.split != out.split).any()


def test_official_test_is_kept_and_overlapping_patients_join_it():
    m = pd.DataFrame({"path": [f"p{i}" for i in range(8)],
                      "patient_id": ["a", "a", "b", "c", "d", "e", "f", "g"],
                      "label": [1, 1, 0, 1, 0, 1, 0, 1],
                      "split": ["test", "", "", "test", "", "", "", ""]})
    with pytest.warns(UserWarning, match=r"1 non-test image\(s\) of 1 patient.*\['a'\]"):
        out = assign_splits(m, val_fraction=0.3, seed=0)
    assert out.split[:2].tolist() == ["test", "test"] and out.split[3] == "test"
    assert set(out.split[m.patient_id.isin(["b", "d", "e", "f", "g"])]) <= {"train", "val"}
    check_no_patient_leak(out)


def test_tiny_sets_still_get_both_classes_in_val():
    m = pd.DataFrame({"path": [f"p{i}" for i in range(12)],
                      "patient_id": [f"p{i}" for i in range(12)],
                      "label": [0] * 6 + [1] * 6, "split": [""] * 12})
    out = assign_splits(m, 0.05, 0.05, seed=1)
    for split in ("val", "test"):
        assert sorted(out[out.split == split].label) == [0, 1]


def test_check_no_patient_leak_lists_patients():
    m = pd.DataFrame({"patient_id": ["a", "a", "b"], "split": ["train", "val", "test"]})
    with pytest.raises(PatientLeakError, match=r"1 patient.*a: \['train', 'val'\]"):
        check_no_patient_leak(m)


def test_bad_arguments():
    m = pd.DataFrame({"patient_id": ["a"], "label": [1], "split": [""]})
    with pytest.raises(ValueError, match="val_fraction=1.2"):
        assign_splits(m, val_fraction=1.2)
    with pytest.raises(ValueError, match="leaves nothing to train on"):
        assign_splits(m, 0.5, 0.5)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['label'\]"):
        assign_splits(m.drop(columns="label"))


def test_cap_per_split_is_stratified_and_seeded():
    out = assign_splits(_kermany(), seed=42)
    capped = cap_per_split(out, 40, seed=42)
    sizes = capped.split.value_counts()
    assert (sizes == 40).all() and len(sizes) == 3
    for split, rows in capped.groupby("split"):
        assert rows.label.mean() == pytest.approx(out[out.split == split].label.mean(), abs=0.03)
    assert capped.path.tolist() == cap_per_split(out, 40, seed=42).path.tolist()
    assert capped.path.tolist() != cap_per_split(out, 40, seed=1).path.tolist()
    assert cap_per_split(out, 0) is out
    rare = out.assign(label=(np.arange(len(out)) % 200 == 0).astype(int))
    assert (cap_per_split(rare, 20).groupby("split").label.sum() >= 1).all()
