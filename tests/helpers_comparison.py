"""Fixture reports for the comparison: results JSON + predictions CSVs as the lead's runs
write them (utils.evaluation.results), for models × datasets × seeds, with external rows; and the
study's five models (`STUDY`) spread so that each question is answered whole on one
dataset and in part on the other."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from utils.evaluation.results import write_predictions, write_results
from utils.evaluation.results import run_name

# step → (model, strength of its signal per dataset); home dataset of every step: rsna
MODELS = {"02_chexnet": ("densenet121", {"kermany": 2.5, "rsna": 1.2}),
          "05_vit": ("vit_tiny", {"kermany": 1.0, "rsna": 1.2}),
          "06_mlp_mixer": ("mixer_tiny", {"kermany": 0.9, "rsna": 1.1})}
DATASETS = ("kermany", "rsna")
# the study's questions (utils.evaluation.questions.QUESTIONS): step → (model, ablation variant,
# strength per dataset it ran on). kermany holds CheXNet, the final ResNet and EfficientNet
# (both clearly weaker) and ViT but no Mixer; rsna holds CheXNet, EfficientNet and both
# transformers (as strong as CheXNet) but no final ResNet, only the ablation's v1 ResNet,
# which is not "the ResNet" of the question although it scores best of all.
STUDY = {"02_chexnet": ("densenet121", "", {"kermany": 2.5, "rsna": 1.2}),
         "03_resnet_ablation_final": ("resnet18", "final", {"kermany": 1.0}),
         "03_resnet_ablation_v1": ("resnet18", "v1", {"kermany": 3.0, "rsna": 3.0}),
         "04_efficientnet_b4": ("efficientnet_b0", "", {"kermany": 1.2, "rsna": 1.2}),
         "05_vit": ("vit_tiny", "", {"kermany": 1.0, "rsna": 1.2}),
         "06_mlp_mixer": ("mixer_tiny", "", {"rsna": 1.1})}


def test_split(dataset: str, patients: int = 80) -> dict:
    """A dataset's test images: 1-3 films per patient, the label per patient."""
    rng = np.random.default_rng(DATASETS.index(dataset))
    sizes = rng.integers(1, 4, patients)
    pid = np.repeat([f"{dataset}_p{i}" for i in range(patients)], sizes)
    y = np.repeat(rng.random(patients) < 0.45, sizes).astype(float)
    u = np.repeat(rng.normal(size=patients), sizes)
    return {"targets": y, "patient_ids": list(pid), "u": u,
            "paths": [f"/data/{dataset}/img{i}.png" for i in range(len(y))]}


def _scores(split: dict, strength: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    y = split["targets"]
    logit = strength * (2 * y - 1) + 0.5 * split["u"] + rng.normal(size=len(y))
    return {"probs": 1 / (1 + np.exp(-logit)), "targets": y,
            "patient_ids": split["patient_ids"], "paths": split["paths"]}


def write_run(reports: Path, step: str, dataset: str, seed_index: int, strength: float,
              model: str, fingerprint: str | None = None, external: bool = True,
              val_strength: float | None = None, variant: str = "") -> str:
    """One seed's results JSON and predictions CSV; `val_strength` (default `strength`)
    lets a model look better or worse on validation than on test; `variant` is the
    ablation's (it names the model when two steps train the same one)."""
    seed = 42 + seed_index
    name = run_name(step, dataset, "rsna", seed)
    test = _scores(test_split(dataset), strength, seed * 7 + len(step))
    val = _scores(test_split(dataset, 40), strength if val_strength is None else val_strength,
                  seed * 11 + len(step))
    others = {d: _scores(test_split(d), strength * 0.6, seed * 13 + len(step))
              for d in DATASETS if d != dataset} if external else {}
    write_results({"step": name, "plan_step": step, "seed": seed, "seed_index": seed_index,
                   "variant": variant, "model": {"name": model, "params": 1e6 * (1 + len(model))},
                   "data": {"dataset": dataset, "synthetic": True,
                            "test_fingerprint": fingerprint or f"fp-{dataset}"},
                   "timing": {"train_seconds": 10.0 + seed_index,
                              "train_images_per_second": 50.0},
                   "threshold": {"value": 0.5, "policy": "max_f1", "chosen_on": "val"},
                   "test": {"auroc": 0.8, "auroc_ci": [0.7, 0.9]},
                   "val": {"auroc": float(roc_auc_score(val["targets"], val["probs"]))}},
                  reports)
    write_predictions(name, {"val": val, "test": test}, reports, dataset=dataset,
                      external=others)
    return name


def make_reports(reports: Path, seeds: int = 2, apart: bool = True) -> Path:
    """3 models × 2 datasets × `seeds`, every run scored on the other dataset; with `apart`,
    one more run (04_efficientnet_b4 on kermany) on another test set."""
    for step, (model, strength) in MODELS.items():
        for dataset in DATASETS:
            for k in range(seeds):
                write_run(reports, step, dataset, k, strength[dataset], model)
    if apart:
        write_run(reports, "04_efficientnet_b4", "kermany", 0, 3.0, "efficientnet_b4",
                  fingerprint="fp-other", external=False)
    return reports


def make_study_reports(reports: Path, seeds: int = 2) -> Path:
    """`STUDY`'s runs, `seeds` each, on the datasets it lists (no external rows)."""
    for step, (model, variant, strength) in STUDY.items():
        for dataset, value in strength.items():
            for k in range(seeds):
                write_run(reports, step, dataset, k, value, model, external=False,
                          variant=variant)
    return reports


def split_aurocs(reports: Path, dataset: str, split: str) -> dict[str, list[float]]:
    """Each step's per-seed AUROC (seed order) on `dataset`'s own `split` rows, straight from
    the CSVs with scikit-learn: an independent check of what utils.evaluation.comparison computes."""
    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted((reports / "results").glob("*_predictions.csv")):
        res = json.loads((reports / "results" /
                          path.name.replace("_predictions.csv", ".json")).read_text())
        if res["data"]["dataset"] != dataset:
            continue
        frame = pd.read_csv(path)
        rows = frame[(frame["split"] == split) & (frame["dataset"] == dataset)]
        auc = roc_auc_score(rows["target"], rows["prob"]) if len(rows) else float("nan")
        out.setdefault(res["plan_step"], []).append((res["seed_index"], auc))
    return {step: [auc for _, auc in sorted(seeds)] for step, seeds in out.items()}


def permute_test_labels(reports: Path, dataset: str, seed: int) -> None:
    """Shuffle `dataset`'s test labels over its images, the same shuffle in every CSV (the
    runs stay aligned), and rewrite every results JSON's test AUROC and fingerprint from
    them; validation rows are left alone."""
    rng = np.random.default_rng(seed)
    csvs = sorted((reports / "results").glob("*_predictions.csv"))
    labels: dict[str, float] = {}
    for csv in csvs:  # path -> label on the test split (and other runs' external rows)
        frame = pd.read_csv(csv)
        rows = frame[frame["split"].isin(["test", "external"]) & (frame["dataset"] == dataset)]
        labels.update(zip(rows["path"], rows["target"]))
    paths = sorted(labels)
    shuffled = dict(zip(paths, np.array([labels[p] for p in paths])[rng.permutation(len(paths))]))
    for csv in csvs:
        frame = pd.read_csv(csv)
        rows = frame["split"].isin(["test", "external"]) & (frame["dataset"] == dataset)
        frame.loc[rows, "target"] = frame.loc[rows, "path"].map(shuffled)
        frame.to_csv(csv, index=False)
        results = reports / "results" / csv.name.replace("_predictions.csv", ".json")
        res = json.loads(results.read_text())
        if res["data"]["dataset"] == dataset:
            test = frame[(frame["split"] == "test")]
            res["test"]["auroc"] = float(roc_auc_score(test["target"], test["prob"]))
            res["data"]["test_fingerprint"] = f"fp-{dataset}-permuted"
            results.write_text(json.dumps(res))
