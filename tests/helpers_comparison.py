"""Fixture reports for the comparison: results JSON + predictions CSVs as the lead's runs
write them (utils.results), for models × datasets × seeds, with external rows."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from utils.results import write_predictions, write_results
from utils.runs import run_name

# step → (model, strength of its signal per dataset); home dataset of every step: rsna
MODELS = {"02_chexnet": ("densenet121", {"kermany": 2.5, "rsna": 1.2}),
          "05_vit": ("vit_tiny", {"kermany": 1.0, "rsna": 1.2}),
          "06_mlp_mixer": ("mixer_tiny", {"kermany": 0.9, "rsna": 1.1})}
DATASETS = ("kermany", "rsna")


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
              model: str, fingerprint: str | None = None, external: bool = True) -> str:
    name = run_name(step, dataset, "rsna", seed_index)
    seed = 42 + seed_index
    test = _scores(test_split(dataset), strength, seed * 7 + len(step))
    val = _scores(test_split(dataset, 40), strength, seed * 11 + len(step))
    others = {d: _scores(test_split(d), strength * 0.6, seed * 13 + len(step))
              for d in DATASETS if d != dataset} if external else {}
    write_results({"step": name, "plan_step": step, "seed": seed, "seed_index": seed_index,
                   "variant": "", "model": {"name": model, "params": 1e6 * (1 + len(model))},
                   "data": {"dataset": dataset, "synthetic": True,
                            "test_fingerprint": fingerprint or f"fp-{dataset}"},
                   "timing": {"train_seconds": 10.0 + seed_index,
                              "train_images_per_second": 50.0},
                   "threshold": {"value": 0.5, "policy": "max_f1", "chosen_on": "val"},
                   "test": {"auroc": 0.8, "auroc_ci": [0.7, 0.9]}}, reports)
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
