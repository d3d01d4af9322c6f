"""A step's common ground: every (dataset × seed) run trained, tested, and scored abroad.

The study's two questions are only answerable when every architecture meets the others on
the same test images: each model step trains on each source it can learn (binary pneumonia
on Kermany, RSNA and NIH's Pneumonia finding), for several seeds, and each trained model is
also scored on the *other* sources' test splits at its own validation threshold (external
validation). `StepGrid` does that for one run_all step; the notebooks show its first run in
detail and the rest as a table. Run names and seeds: `utils.study.runs`.

    grid = StepGrid(cfg, ctx)
    exp = grid.prepare(grid.primary)          # the step's own dataset, first seed
    exp.model = build_model(grid.primary, 1)
    train(exp, ctx)
    grid.evaluate(exp)                        # threshold on val, test, external, JSON
    grid.run_rest()                           # every other run, the same four calls
    grid.table()

Sources are loaded once per step (their image checks are the slow part on real data), and
RSNA ⊂ NIH is respected in both directions (`utils.data.overlap.cross_source_exclusion`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import pandas as pd

from ..config import RunConfig
from ..data import BINARY_SOURCES
from ..runtime import RunContext
from .experiment import Experiment, build_model, evaluate_and_record, prepare_data, train
from .runs import run_configs

__all__ = ["StepGrid", "external_row"]


def external_row(dataset: str, pred, threshold: float, cfg: RunConfig,
                 fingerprint: str) -> dict[str, Any]:
    """Metrics of one model on another source's test split, at the model's own threshold,
    with bootstrap CIs over that split's patients."""
    from ..evaluation.metrics import binary_metrics, bootstrap_ci

    y, p = pred.targets[:, 0], pred.probs[:, 0]
    m = binary_metrics(y, p, threshold)
    cis = bootstrap_ci(y, p, threshold, n_boot=cfg.bootstrap, seed=cfg.seed,
                       groups=pred.patient_ids) if cfg.bootstrap > 0 else {}
    row = {"dataset": dataset, "n": m["n"], "n_pos": m["n_pos"], "threshold": threshold,
           "test_fingerprint": fingerprint}
    for name in ("auroc", "auprc", "f1", "sensitivity", "specificity", "accuracy"):
        row[name] = m[name]
        row[f"{name}_ci"] = list(cis.get(name, (math.nan, math.nan)))
    return row


class StepGrid:
    """The runs of one step (`utils.study.runs.run_configs`) and the manifests they share."""

    def __init__(self, cfg: RunConfig, ctx: RunContext):
        from ..data.discover import find_sources

        self.cfg, self.ctx = cfg, ctx
        self.runs = run_configs(cfg, ctx.data_root)
        self.primary = self.runs[0]
        # external validation: every binary source the data root holds (but a run's own)
        found = find_sources(ctx.data_root) if cfg.task == "binary" else {}
        self.external_sources = [d for d in BINARY_SOURCES if d in found]
        self._manifests: dict[str, pd.DataFrame] = {}
        self.results: dict[str, dict[str, Any]] = {}

    def __repr__(self) -> str:
        seeds = sorted({r.seed for r in self.runs})
        lines = [f"StepGrid({self.cfg.step or '(interactive)'}: {len(self.runs)} run(s) = "
                 f"{len({r.dataset for r in self.runs})} dataset(s) × {len(seeds)} seed(s) "
                 f"{seeds}; split_seed {self.cfg.split_seed}; external test splits: "
                 f"{', '.join(self.external_sources) or 'none'})"]
        lines += [f"  {r.step:<44} {r.dataset:<8} seed {r.seed}" for r in self.runs]
        return "\n".join(lines)

    def update(self, **changes: Any) -> None:
        """Change a setting of every run (e.g. 02's part B: `init_checkpoint` = part A's)."""
        self.cfg = dataclasses.replace(self.cfg, **changes)
        self.runs = [dataclasses.replace(r, **changes) for r in self.runs]
        self.primary = self.runs[0]

    # --- data ---------------------------------------------------------------------
    def manifest(self, dataset: str) -> pd.DataFrame:
        """The split manifest of a source (binary labels), loaded once per step."""
        from ..data.dataset import load_manifest

        if dataset not in self._manifests:  # the same rows whatever the task
            self._manifests[dataset] = load_manifest(dataclasses.replace(
                self.cfg, dataset=dataset, task="binary", datasets=""))
        return self._manifests[dataset]

    def _in_play(self) -> dict[str, pd.DataFrame]:
        names = {r.dataset for r in self.runs} | set(self.external_sources)
        return {d: self.manifest(d) for d in ("rsna", "nih") if d in names}

    def prepare(self, run: RunConfig) -> Experiment:
        """One run's data: its source's manifest minus what the other sources test on."""
        from ..data.overlap import cross_source_exclusion

        exclude = cross_source_exclusion(run.dataset, self._in_play(), self.ctx.data_root)
        return prepare_data(run, exclude=exclude, manifest=self.manifest(run.dataset))

    # --- evaluation -----------------------------------------------------------------
    def _score_external(self, exp: Experiment) -> tuple[list, dict]:
        from ..data.dataset import make_loaders, test_fingerprint
        from ..models.registry import normalisation
        from ..evaluation.metrics import predict

        rows, scored = [], {}
        if exp.cfg.task != "binary":
            return rows, scored
        threshold = float(exp.evaluation["threshold"]["value"])
        for dataset in self.external_sources:
            if dataset == exp.cfg.dataset:
                continue
            manifest = self.manifest(dataset)
            run = dataclasses.replace(exp.cfg, dataset=dataset)
            loader = make_loaders(run, manifest, normalisation(run.model, run.pretrained),
                                  splits=("test",))["test"]
            # the run's own precision: its test and validation were scored with cfg.amp too
            scored[dataset] = predict(exp.model, loader, self.ctx.device, tta=exp.cfg.tta,
                                      amp=exp.cfg.amp)
            rows.append(external_row(dataset, scored[dataset], threshold, exp.cfg,
                                     test_fingerprint(manifest)))
        return rows, scored

    def evaluate(self, exp: Experiment) -> dict[str, Any]:
        """Threshold on val, test once, other sources' tests, results JSON (one run)."""
        results = evaluate_and_record(exp, self.ctx, external=self._score_external)
        self.results[exp.cfg.step] = results
        return results

    def run(self, run: RunConfig) -> dict[str, Any]:
        """Train and evaluate one run end to end; its model is freed afterwards."""
        exp = self.prepare(run)
        exp.model = build_model(run, num_classes=len(exp.class_names))
        train(exp, self.ctx)
        results = self.evaluate(exp)
        exp.model = exp.loaders = None
        return results

    def run_rest(self) -> list[dict[str, Any]]:
        """Every run not evaluated yet, in order (the primary is the notebook's own)."""
        todo = [r for r in self.runs if r.step not in self.results]
        if todo:
            print(f"{len(todo)} more run(s): " + ", ".join(r.step for r in todo), flush=True)
        return [self.run(r) for r in todo]

    # --- what the notebook shows ------------------------------------------------------
    def table(self) -> pd.DataFrame:
        """One row per run: dataset, seed, test metrics with CIs, external AUROCs."""
        rows = []
        for name, res in self.results.items():
            test = res["test"]
            row = {"run": name, "dataset": res["data"]["dataset"], "seed": res["seed"],
                   "n_test": test.get("n"), "threshold": res["threshold"]["value"]}
            for metric in ("auroc", "f1", "sensitivity", "specificity"):
                lo, hi = (test.get(f"{metric}_ci") or [None, None])[:2]
                row[metric] = _with_ci(test.get(metric), lo, hi)
            for ext in res.get("external") or []:
                row[f"AUROC on {ext['dataset']}"] = _with_ci(ext["auroc"], *ext["auroc_ci"][:2])
            rows.append(row)
        return pd.DataFrame(rows).set_index("run")


def _with_ci(value, lo, hi) -> str:
    """`0.912 [0.880, 0.940]` as one string, so a table never wraps inside a number."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if lo is None or hi is None or any(isinstance(v, float) and math.isnan(v) for v in (lo, hi)):
        return f"{value:.3f}"
    return f"{value:.3f} [{lo:.3f}, {hi:.3f}]"
