"""RSNA Pneumonia ⊂ NIH ChestX-ray14: keep part B's RSNA val/test patients out of NIH training.

The RSNA Pneumonia Detection Challenge images are NIH ChestX-ray14 films, relabelled. A model
pre-trained on NIH and then measured on an RSNA test split has seen those very films (and
other films of the same people) unless they are removed from the NIH side first. RSNA
published the correspondence as `pneumonia-challenge-dataset-mappings_2018.json` on the
challenge page (it is not on Kaggle): a list of objects with `subset_img_id` (the RSNA
patientId, the DICOM's file stem) and `img_id` (the NIH `Image Index`), plus
`SOPInstanceUID` and `orig_labels`. Reading it lives in `rsna.py` (which also groups RSNA's
splits by the NIH patients it names); the names are re-exported here.
"""
from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from .rsna import (MAPPING_NAME, MAPPING_URL, find_rsna_nih_mapping, load_rsna_nih_mapping,
                   nih_patient_of)

__all__ = ["MAPPING_NAME", "MAPPING_URL", "find_rsna_nih_mapping", "load_rsna_nih_mapping",
           "drop_rsna_holdout_patients", "drop_nih_test_patients", "nih_patient_of",
           "missing_mapping_message", "holdout_exclusion", "cross_source_exclusion"]

_HOLDOUT = ("val", "test")
_TRAINING = ("train", "val")  # the splits a model learns from or is selected on


def drop_rsna_holdout_patients(nih_manifest: pd.DataFrame, rsna_manifest: pd.DataFrame,
                               mapping: pd.DataFrame,
                               splits: tuple[str, ...] = _TRAINING) -> pd.DataFrame:
    """NIH rows of `splits` minus every image of each NIH patient behind an RSNA val/test
    image. NIH's own test rows stay by default: one NIH test set for every model, and a
    model never learns from (nor is selected on) the films it will be tested on in RSNA.

    Patient-level: another film of the same person is as much a leak as the film itself.
    NIH patients are taken from the manifest rows whose file name is a mapped image, and
    from the mapped name's `<patient>_<follow-up>.png` prefix (the mapped film itself may
    be capped out of the manifest while the patient's other films remain). The remaining
    rows keep their splits; `attrs["dropped_for_rsna_overlap"]` lists the dropped file names
    and `attrs["dropped_patients_for_rsna_overlap"]` their patients.
    """
    ids = "image_id" if "image_id" in rsna_manifest else "patient_id"  # RSNA's patientId
    holdout = set(rsna_manifest.loc[rsna_manifest["split"].isin(_HOLDOUT), ids].astype(str))
    mapped = set(mapping.loc[mapping["rsna_patient_id"].isin(holdout), "nih_image"])
    names = nih_manifest["path"].map(os.path.basename)
    patient_ids = nih_manifest["patient_id"].astype(str)
    patients = set(patient_ids[names.isin(mapped)])
    patients |= {p for p in map(nih_patient_of, mapped) if p}  # as nih_labels writes them
    drop = patient_ids.isin(patients) & nih_manifest["split"].isin(splits)
    out = nih_manifest[~drop].reset_index(drop=True)
    out.attrs.update(nih_manifest.attrs, dropped_for_rsna_overlap=sorted(names[drop]),
                     dropped_patients_for_rsna_overlap=sorted(set(patient_ids[drop])))
    return out


def drop_nih_test_patients(rsna_manifest: pd.DataFrame, nih_manifest: pd.DataFrame,
                           mapping: pd.DataFrame) -> pd.DataFrame:
    """RSNA train/val rows minus the images of NIH patients in NIH's test split.

    The other direction of the overlap: a model trained on RSNA and scored on NIH's test
    split (external validation) must not have learnt from those patients' films. RSNA rows
    are matched by file stem (RSNA's patientId), whatever their `patient_id` grouping is.
    `attrs["dropped_for_nih_overlap"]` lists the dropped files.
    """
    test_patients = set(nih_manifest.loc[nih_manifest["split"] == "test", "patient_id"]
                        .astype(str))
    nih_of = dict(zip(mapping["rsna_patient_id"], mapping["nih_image"].map(nih_patient_of)))
    stems = rsna_manifest["path"].map(lambda p: Path(p).stem)
    drop = stems.map(nih_of).isin(test_patients) & rsna_manifest["split"].isin(_TRAINING)
    out = rsna_manifest[~drop].reset_index(drop=True)
    out.attrs.update(rsna_manifest.attrs,
                     dropped_for_nih_overlap=sorted(rsna_manifest.loc[drop, "path"]))
    return out


def cross_source_exclusion(dataset: str, manifests: dict[str, pd.DataFrame],
                           data_root: str | os.PathLike
                           ) -> Callable[[pd.DataFrame], pd.DataFrame] | None:
    """The `prepare_data(exclude=)` for a run on `dataset` when RSNA and NIH are both used.

    RSNA's images are NIH films, so a model trained on one and tested on the other (02's
    NIH pre-training → RSNA; external validation NIH → RSNA and RSNA → NIH) must not have
    trained on the test films of the other: NIH training drops the NIH patients behind RSNA
    val/test images; RSNA training drops the images of NIH test patients. Test splits are
    never touched, so every model of a source is tested on the same images.

    Args:
        dataset: the source the run trains on.
        manifests: the split manifests of the sources in play (`load_manifest` results),
            keyed by source; only "rsna" and "nih" matter.
    Returns None when the other source is not in play; without the mapping file it says
    loudly that cross-source numbers are not leak-free, and returns None.
    """
    other = {"nih": "rsna", "rsna": "nih"}.get(dataset)
    if other is None or other not in manifests:
        return None
    path = find_rsna_nih_mapping(data_root)
    if path is None:
        return _say_not_leak_free(data_root)
    mapping = load_rsna_nih_mapping(path)
    if dataset == "nih":
        return functools.partial(drop_rsna_holdout_patients, rsna_manifest=manifests["rsna"],
                                 mapping=mapping)
    return functools.partial(drop_nih_test_patients, nih_manifest=manifests["nih"],
                             mapping=mapping)


def missing_mapping_message(root: str | os.PathLike) -> str:
    """What to say when the mapping is absent: part B's RSNA numbers are not leak-free."""
    return (f"{MAPPING_NAME} not found under {root}: part A's NIH training may contain part "
            f"B's RSNA validation/test images (RSNA's images are NIH ChestX-ray14 films), so "
            f"part B's RSNA test numbers are NOT leak-free from part A. Fix: download the JSON "
            f"from the RSNA Pneumonia Detection Challenge page ({MAPPING_URL}) into the data "
            f"root and re-run.")


def _say_not_leak_free(root: str | os.PathLike) -> None:
    """Loudly (a banner and a warning): without the mapping, cross-source numbers leak."""
    message = missing_mapping_message(root)
    print("!" * 88 + f"\n{message}\n" + "!" * 88)
    warnings.warn(message, stacklevel=3)


def holdout_exclusion(cfg: Any, data_root: str | os.PathLike
                      ) -> Callable[[pd.DataFrame], pd.DataFrame] | None:
    """For 02 part A: the `prepare_data(exclude=)` that keeps part B's RSNA val/test patients
    out of NIH training, or None when part B is not RSNA (Kermany does not overlap NIH).

    Part B's splits come from `load_manifest(cfg)`: the same config, so the same seeded
    patient splits part B will draw. Without the mapping file this says loudly (print and
    warning) that part B's numbers are not leak-free, and returns None.
    """
    if cfg.dataset != "rsna":
        return None
    from .dataset import load_manifest

    path = find_rsna_nih_mapping(data_root)
    if path is None:
        return _say_not_leak_free(data_root)
    print(f"RSNA→NIH mapping: {path}")
    return functools.partial(drop_rsna_holdout_patients, rsna_manifest=load_manifest(cfg),
                             mapping=load_rsna_nih_mapping(path))
