"""Results JSON: every required key, strict JSON (NaN → null), a table that round-trips."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from utils.config import make_config
from utils.evaluation.results import (RESULT_COLUMNS, build_results, load_predictions,
                                      load_results, write_predictions, write_results)

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "auroc", "auprc")


def evaluation(auroc: float = 0.91, per_finding=None) -> dict:
    test = {m: 0.8 for m in METRICS}
    test.update({f"{m}_ci": [0.7, 0.9] for m in METRICS})
    test.update(auroc=np.float64(auroc), auroc_ci=(np.float32(0.875), 0.95),
                specificity=float("nan"), specificity_ci=[float("nan"), float("nan")],
                confusion_matrix=[[5, 1], [2, 7]], n=15, n_pos=9)
    return {"threshold": {"value": np.float32(0.375), "policy": "max_f1", "chosen_on": "val"},
            "test": test, "val": {"auroc": 0.88, "f1": 0.8},
            "calibration": {"ece": 0.05, "bin_accuracy": [float("nan"), 0.5]},
            "per_finding": per_finding, "class_names": ["Pneumonia"], "target": "Pneumonia",
            "predictions": {"test": object()}}


HISTORY = {"epochs": [{"epoch": 1, "train_loss": 0.5, "val_loss": 0.4, "val_auroc": float("nan")}],
           "best_epoch": 1, "best_score": 0.4, "monitor": "val_loss", "stopped_early": False,
           "train_seconds": 12.5, "train_images_per_second": 80.0, "resumed_from": 0}


def results(step: str = "02_chexnet", **kw) -> dict:
    cfg = make_config({"step": step, "model": "densenet121", "variant": kw.pop("variant", "")},
                      profile="demo")
    return build_results(cfg, model_name="densenet121", n_params=np.int64(7_000_000),
                         data_sizes={"train": 80, "val": 20, "test": 20}, history=HISTORY,
                         evaluation=evaluation(**kw), environment={"torch": "2.x"},
                         synthetic=True)


def test_results_have_every_required_key_and_are_strict_json():
    res = results()
    for key in ("step", "config", "model", "data", "timing", "history", "threshold", "test",
                "val", "calibration", "per_finding", "environment", "created"):
        assert key in res, key
    for m in METRICS:
        assert m in res["test"] and len(res["test"][f"{m}_ci"]) == 2
    assert res["model"] == {"name": "densenet121", "params": 7_000_000}
    assert res["data"]["synthetic"] is True and res["data"]["dataset"] == "kermany"
    assert res["timing"] == {"train_seconds": 12.5, "train_images_per_second": 80.0}
    assert res["threshold"] == {"value": 0.375, "policy": "max_f1", "chosen_on": "val"}
    assert res["test"]["specificity"] is None and res["test"]["auroc_ci"] == [0.875, 0.95]
    assert res["history"][0]["val_auroc"] is None and res["config"]["step"] == "02_chexnet"
    assert "predictions" not in json.dumps(res)

    def reject(token):
        raise AssertionError(f"non-standard JSON constant {token}")

    json.loads(json.dumps(res), parse_constant=reject)


def test_per_finding_rows_and_macro_for_multilabel_runs():
    rows = [{"finding": "Atelectasis", "auroc": 0.7, "auprc": 0.2, "n_pos": 3, "n": 30},
            {"finding": "Hernia", "auroc": float("nan"), "auprc": float("nan"), "n_pos": 0, "n": 30}]
    res = results(per_finding={"per_finding": rows, "macro_auroc": 0.7, "macro_auprc": 0.2})
    assert [r["finding"] for r in res["per_finding"]] == ["Atelectasis", "Hernia"]
    assert res["per_finding"][1]["auroc"] is None
    assert res["per_finding_macro"] == {"macro_auroc": 0.7, "macro_auprc": 0.2}
    assert results()["per_finding"] is None and results()["per_finding_macro"] is None


def test_extra_keys_cannot_replace_core_ones():
    cfg = make_config({"step": "s"}, profile="smoke")
    kw = dict(model_name="m", n_params=1, data_sizes={}, history=HISTORY,
              evaluation=evaluation(), environment=None, synthetic=False)
    assert build_results(cfg, extra={"localisation": {"iou": 0.4}}, **kw)["localisation"]["iou"] == 0.4
    with pytest.raises(ValueError, match="test"):
        build_results(cfg, extra={"test": {}}, **kw)


def test_write_and_load_results_round_trip(tmp_path):
    path = write_results(results("02_chexnet"), tmp_path)
    assert path == tmp_path / "results" / "02_chexnet.json"
    write_results(results("03_resnet_v1", auroc=0.85, variant="v1"), tmp_path)
    df = load_results(tmp_path)
    assert list(df.columns) == RESULT_COLUMNS and list(df["step"]) == ["02_chexnet", "03_resnet_v1"]
    row = df.iloc[1]
    assert row["auroc"] == 0.85 and row["auroc_lo"] == 0.875 and row["auroc_hi"] == 0.95
    assert row["variant"] == "v1" and row["model"] == "densenet121" and bool(row["synthetic"])
    assert row["threshold"] == 0.375 and row["threshold_policy"] == "max_f1"
    assert row["params"] == 7_000_000 and row["train_seconds"] == 12.5
    assert row["images_per_second"] == 80.0 and row["f1_lo"] == 0.7
    assert math.isnan(row["specificity"]) and math.isnan(row["specificity_hi"])
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == \
        ["02_chexnet.json", "03_resnet_v1.json"]  # no temp files left


def test_load_results_skips_broken_files_and_handles_empty(tmp_path):
    empty = load_results(tmp_path)
    assert empty.empty and list(empty.columns) == RESULT_COLUMNS
    write_results(results("good"), tmp_path)
    (tmp_path / "results" / "half.json").write_text('{"step": "half", "test": {')
    with pytest.warns(UserWarning, match="half.json"):
        df = load_results(tmp_path)
    assert list(df["step"]) == ["good"]
    with pytest.raises(ValueError, match="step"):
        write_results({"test": {}}, tmp_path)


def test_predictions_csv_round_trip(tmp_path):
    preds = {"val": {"probs": np.array([[0.2], [0.7]]), "targets": np.array([[0], [1]]),
                     "paths": ["a.png", "b.png"], "patient_ids": ["NA", "p2"],
                     "indices": np.array([4, 5])},
             "test": {"probs": np.array([0.9, 0.1, 0.4]), "targets": np.array([1, 0, 0])}}
    path = write_predictions("s1", preds, tmp_path)
    assert path.name == "s1_predictions.csv"
    df = load_predictions("s1", tmp_path)
    assert list(df["split"]) == ["val", "val", "test", "test", "test"]
    assert list(df["prob"]) == [0.2, 0.7, 0.9, 0.1, 0.4] and list(df["target"]) == [0, 1, 1, 0, 0]
    assert list(df["index"]) == [4, 5, 0, 1, 2] and df["patient_id"][0] == "NA"
    multi = {"test": {"probs": np.array([[0.1, 0.8]]), "targets": np.array([[0, 1]]),
                      "class_names": ["Effusion", "Pneumonia"]}}
    df = load_predictions("s2", write_predictions("s2", multi, tmp_path).parent.parent)
    assert df.loc[0, "prob_Pneumonia"] == 0.8 and df.loc[0, "target_Effusion"] == 0
    assert df.loc[0, "prob"] == 0.8 and df.loc[0, "target"] == 1  # the Pneumonia column
    with pytest.raises(FileNotFoundError, match="missing"):
        load_predictions("missing", tmp_path)


def test_results_module_imports_no_torch():
    code = "import sys, utils.evaluation.results; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
