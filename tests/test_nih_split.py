"""NIH's official split: `test_list.txt` / `train_val_list.txt` decide the test split."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from utils.data.nih import nih_manifest
from utils.data.splits import assign_splits, check_no_patient_leak

# (image, findings, patient): patients 1-4 train/val, 5-6 official test
ENTRIES = [(f"{p:08d}_{k:03d}.png", "Pneumonia" if (p + k) % 3 == 0 else "No Finding", p)
           for p in range(1, 7) for k in range(3)]
TEST = [e[0] for e in ENTRIES if e[2] >= 5]
TRAIN_VAL = [e[0] for e in ENTRIES if e[2] < 5]


def nih_root(root: Path, test=TEST, train_val=TRAIN_VAL) -> Path:
    folder = root / "images_001" / "images"
    folder.mkdir(parents=True)
    for name, *_ in ENTRIES:
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / name)
    pd.DataFrame({"Image Index": [e[0] for e in ENTRIES], "Finding Labels": [e[1] for e in ENTRIES],
                  "Patient ID": [e[2] for e in ENTRIES]}).to_csv(root / "Data_Entry_2017.csv",
                                                                 index=False)
    for fname, names in (("test_list.txt", test), ("train_val_list.txt", train_val)):
        if names is not None:
            (root / fname).write_text("".join(f"{n}\n" for n in names))
    return root


def _test_names(m: pd.DataFrame) -> list[str]:
    return sorted(m.loc[m.split == "test", "path"].map(lambda p: Path(p).name))


def test_both_lists_give_the_official_test_split_and_it_survives_assign_splits(tmp_path):
    m = nih_manifest(nih_root(tmp_path))
    assert _test_names(m) == TEST and set(m.split) == {"", "test"}
    out = assign_splits(m, 0.25, 0.15, seed=0)
    assert _test_names(out) == TEST and set(out.split) == {"train", "val", "test"}
    check_no_patient_leak(out)


def test_train_val_list_alone_makes_the_rest_test(tmp_path):
    m = nih_manifest(nih_root(tmp_path, test=None))
    assert _test_names(m) == TEST


def test_no_list_leaves_the_test_split_to_assign_splits(tmp_path):
    m = nih_manifest(nih_root(tmp_path, test=None, train_val=None))
    assert set(m.split) == {""}


def test_an_image_in_both_lists_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"1 image\(s\) are in both .*test_list\.txt.*"
                                         r"00000001_000\.png"):
        nih_manifest(nih_root(tmp_path, test=TEST + [TRAIN_VAL[0]]))


def test_images_in_neither_list_stay_out_of_test_with_a_warning(tmp_path):
    with pytest.warns(UserWarning, match=r"2 of 18 labelled image\(s\) are in neither"):
        m = nih_manifest(nih_root(tmp_path, train_val=TRAIN_VAL[2:]))
    assert _test_names(m) == TEST and (m.split == "").sum() == len(TRAIN_VAL)
