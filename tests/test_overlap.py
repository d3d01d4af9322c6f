"""utils.data.overlap: NIH patients behind RSNA val/test images leave part A's NIH data, by
patient; the mapping JSON's shape is checked; the demo set carries a working mapping; and
prepare_data(exclude=) drops rows without moving the others between splits."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import pandas as pd
import pytest

from utils.data.demo import make_demo
from utils.data.overlap import (MAPPING_NAME, drop_nih_test_patients, drop_rsna_holdout_patients,
                                nih_patient_of,
                                find_rsna_nih_mapping, holdout_exclusion,
                                load_rsna_nih_mapping, missing_mapping_message)

RSNA = "rsna-pneumonia-detection-challenge"


def _nih(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    """(file name, patient, split) → a minimal NIH manifest with attrs."""
    df = pd.DataFrame(rows, columns=["name", "patient_id", "split"])
    df.insert(0, "path", "/data/nih/images_001/images/" + df.pop("name"))
    df.attrs.update(root="/data/nih", skipped=[])
    return df


@pytest.fixture
def case() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    nih = _nih([("00000001_000.png", "1", "train"), ("00000001_001.png", "1", "train"),
                ("00000002_000.png", "2", "train"),  # mapped to an RSNA *train* patient: kept
                ("00000003_000.png", "3", "test"), ("00000003_001.png", "3", "test"),
                ("00000004_000.png", "4", "val"),     # not mapped: kept
                ("00000005_000.png", "5", "train"),   # its mapped film is not in the manifest
                ("scan_a.png", "7", "val"), ("scan_b.png", "7", "train")])  # no NIH-style name
    rsna = pd.DataFrame({"patient_id": ["r1", "r2", "r3", "r5", "r6", "r7"],
                         "split": ["val", "train", "test", "val", "test", "test"]})
    mapping = pd.DataFrame({
        "rsna_patient_id": ["r1", "r2", "r3", "r5", "r6", "r7"],
        "nih_image": ["00000001_000.png", "00000002_000.png", "00000003_001.png",
                      "00000005_002.png", "00099999_000.png", "scan_a.png"]})
    return nih, rsna, mapping


def test_drops_every_training_film_of_each_holdout_patient_and_nothing_else(case):
    nih, rsna, mapping = case
    out = drop_rsna_holdout_patients(nih, rsna, mapping)
    kept = sorted(Path(p).name for p in out["path"])
    # NIH's own test rows stay (patient 3): one NIH test set for every model
    assert kept == ["00000002_000.png", "00000003_000.png", "00000003_001.png",
                    "00000004_000.png"]
    assert out.attrs["dropped_for_rsna_overlap"] == [
        "00000001_000.png", "00000001_001.png", "00000005_000.png", "scan_a.png", "scan_b.png"]
    assert out.attrs["dropped_patients_for_rsna_overlap"] == ["1", "5", "7"]
    assert out.attrs["root"] == "/data/nih" and out.attrs["skipped"] == []
    assert list(out["split"]) == ["train", "test", "test", "val"]  # rows keep their split
    every = drop_rsna_holdout_patients(nih, rsna, mapping, splits=("train", "val", "test"))
    assert sorted(Path(p).name for p in every["path"]) == ["00000002_000.png",
                                                           "00000004_000.png"]
    assert len(nih) == 9 and "dropped_for_rsna_overlap" not in nih.attrs  # input untouched


def test_rsna_train_patients_alone_drop_nothing(case):
    nih, rsna, mapping = case
    out = drop_rsna_holdout_patients(nih, rsna.assign(split="train"), mapping)
    assert out["path"].tolist() == nih["path"].tolist()
    assert out.attrs["dropped_for_rsna_overlap"] == []


def _write(path: Path, content) -> Path:
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


@pytest.mark.parametrize("content, match", [
    ([{"subset_img_id": "r1", "SOPInstanceUID": "1.2"}], r"lack key\(s\) \['img_id'\]"),
    ({"subset_img_id": "r1", "img_id": "x.png"}, "expected a JSON list of objects"),
    ("<html>Access denied</html>", "not valid JSON"),
])
def test_malformed_mapping_gives_a_clear_error(tmp_path, content, match):
    path = _write(tmp_path / MAPPING_NAME, content)
    with pytest.raises(ValueError, match=match) as err:
        load_rsna_nih_mapping(path)
    assert str(path) in str(err.value) and MAPPING_NAME in str(err.value)


def test_load_and_find(tmp_path):
    entries = [{"subset_img_id": "r1", "img_id": "00000001_000.png", "SOPInstanceUID": "1.2",
                "orig_labels": ["Infiltration"]}, {"subset_img_id": "r2", "img_id": "00000002_000"}]
    assert find_rsna_nih_mapping(tmp_path) is None
    message = missing_mapping_message(tmp_path)
    assert "NOT leak-free" in message and MAPPING_NAME in message and str(tmp_path) in message
    (tmp_path / RSNA).mkdir()
    path = _write(tmp_path / RSNA / MAPPING_NAME, entries)
    assert find_rsna_nih_mapping(tmp_path) == path
    mapping = load_rsna_nih_mapping(path)
    assert mapping.to_dict("list") == {"rsna_patient_id": ["r1", "r2"],
                                       "nih_image": ["00000001_000.png", "00000002_000.png"]}


def test_find_looks_beside_a_nested_rsna_folder(tmp_path):
    rsna = tmp_path / "downloads" / "competitions" / "rsna"
    rsna.mkdir(parents=True)
    (rsna / "stage_2_train_labels.csv").write_text("patientId,x,y,width,height,Target\n")
    path = _write(rsna / MAPPING_NAME, [])
    assert find_rsna_nih_mapping(tmp_path) == path and load_rsna_nih_mapping(path).empty


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    return make_demo(tmp_path_factory.mktemp("demo"), seed=0, image_px=32, scale=0.5)


def _cfg(root: Path, dataset: str):
    from utils.config import make_config

    return make_config({"dataset": dataset, "data_root": str(root), "model": "simple_cnn",
                        "max_images": 0}, "smoke")


def _exclusion(root: Path):
    return holdout_exclusion(_cfg(root, "rsna"), root)


def test_holdout_exclusion_only_for_rsna_and_loud_without_the_mapping(demo_root, tmp_path,
                                                                      capsys):
    assert holdout_exclusion(_cfg(demo_root, "kermany"), demo_root) is None
    assert isinstance(_exclusion(demo_root), functools.partial)
    bare = tmp_path / "bare"
    (bare / RSNA).mkdir(parents=True)
    for item in (demo_root / RSNA).iterdir():
        if item.name != MAPPING_NAME:
            (bare / RSNA / item.name).symlink_to(item)
    with pytest.warns(UserWarning, match="NOT leak-free"):
        assert holdout_exclusion(_cfg(bare, "rsna"), bare) is None
    assert "NOT leak-free" in capsys.readouterr().out


def test_demo_mapping_links_real_ids_and_removes_nih_images(demo_root):
    from utils.data.dataset import load_manifest

    path = find_rsna_nih_mapping(demo_root)
    assert path == demo_root / RSNA / MAPPING_NAME
    mapping = load_rsna_nih_mapping(path)
    rsna, nih = load_manifest(_cfg(demo_root, "rsna")), load_manifest(_cfg(demo_root, "nih"))
    names = nih["path"].map(lambda p: Path(p).name)
    assert set(mapping["rsna_patient_id"]) <= set(rsna["image_id"])  # RSNA's patientId
    assert set(mapping["nih_image"]) <= set(names) and mapping.nunique().min() == len(mapping)
    assert 0.2 < len(mapping) / len(nih) < 0.35  # the real share: 30k of 112k NIH images
    out = _exclusion(demo_root)(nih)
    dropped = out.attrs["dropped_for_rsna_overlap"]
    assert 0 < len(dropped) < len(nih) / 2 and len(out) + len(dropped) == len(nih)
    holdout = set(rsna.loc[rsna["split"] != "train", "image_id"])
    leaked = set(mapping.loc[mapping["rsna_patient_id"].isin(holdout), "nih_image"])
    gone = set(nih.loc[names.isin(leaked), "patient_id"])
    learnt = out[out["split"] != "test"]
    assert not set(learnt["patient_id"]) & gone
    assert set(dropped) >= leaked - set(names[nih["split"] == "test"])


def test_rsna_training_drops_the_films_of_nih_test_patients(case):
    nih, _, mapping = case
    rsna = pd.DataFrame({"path": [f"/r/{r}.dcm" for r in ["r1", "r2", "r3", "r5"]],
                         "patient_id": ["1", "2", "3", "5"],
                         "split": ["train", "val", "test", "train"]})
    out = drop_nih_test_patients(rsna, nih, mapping)  # r3 → NIH patient 3, in NIH test
    assert out["path"].tolist() == ["/r/r1.dcm", "/r/r2.dcm", "/r/r3.dcm", "/r/r5.dcm"]
    out = drop_nih_test_patients(rsna.assign(split="train"), nih, mapping)
    assert out["path"].tolist() == ["/r/r1.dcm", "/r/r2.dcm", "/r/r5.dcm"]
    assert out.attrs["dropped_for_nih_overlap"] == ["/r/r3.dcm"]
    assert nih_patient_of("00000013_005.png") == "13" and nih_patient_of("scan_a.png") == ""


def test_prepare_data_exclude_keeps_the_remaining_splits(demo_root):
    from utils.study.experiment import prepare_data

    cfg = _cfg(demo_root, "nih")
    plain = prepare_data(cfg).manifest
    exp = prepare_data(cfg, exclude=_exclusion(demo_root))
    assert 0 < len(exp.manifest) < len(plain)
    before = dict(zip(plain["path"], plain["split"]))
    assert all(before[p] == s for p, s in zip(exp.manifest["path"], exp.manifest["split"]))
    assert sum(len(loader.dataset) for loader in exp.loaders.values()) == len(exp.manifest)
    assert exp.manifest.attrs["dropped_for_rsna_overlap"]
    with pytest.raises(ValueError, match="only drop rows"):
        prepare_data(cfg, exclude=lambda m: m.assign(split="train"))
