"""The study's transfer experiment (notebook 09): one target task, several starting points
(random init, ImageNet, our own NIH-pretrained CheXNet, torchxrayvision weights), each
fine-tuned from a few `trainable_from` stages (head only, the last block, everything: the
study's `--stage`), compared on one test split with CIs and paired differences.

An *arm* is one (start, stage) pair. Arms that cannot run here (offline ImageNet weights,
no `02_chexnet_nih` checkpoint yet, torchxrayvision weights not downloaded) are kept with
the reason, so the table says what was skipped and why instead of silently shrinking.
Every arm trains through `utils.study.experiment` exactly like the model notebooks; their results
go to `<reports>/transfer/results/` (not `<reports>/results/`, so the comparison notebook
does not rank them with the architectures).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..config import ConfigError, RunConfig, make_config
from ..runtime import RunContext

__all__ = ["START_POINTS", "Arm", "stages_for", "plan_arms", "run_arms", "transfer_table",
           "skipped_table", "paired_auroc", "learning_curves", "roc_curves", "write_summary",
           "nih_checkpoint"]

START_POINTS = ("random", "imagenet", "nih", "xrv")
NIH_RUN = "02_chexnet_nih"          # 02's part A: DenseNet121 on NIH's 14 findings
XRV_DEFAULT = "densenet121-res224-all"


@dataclass
class Arm:
    """One starting point × trainable stage; `skipped` says why it did not run."""

    start: str
    stage: str
    cfg: RunConfig | None = None
    skipped: str = ""
    model: Any = None               # built by plan_arms (which checks the weights exist)
    experiment: Any = None          # utils.study.experiment.Experiment, once it ran

    @property
    def name(self) -> str:
        return f"{self.start}/{self.stage}"


def stages_for(cfg: RunConfig) -> list[str]:
    """The `trainable_from` stages to compare (`cfg.transfer_stages`; "" = head only and
    everything on the CPU-sized profiles, for the demo's budget, plus the model's last
    stage, e.g. DenseNet's denseblock4, on the full profile)."""
    from ..models.registry import model_info

    if cfg.transfer_stages.strip():
        return [s.strip() for s in cfg.transfer_stages.split(",") if s.strip()]
    if cfg.profile in ("demo", "smoke"):
        return ["head", "all"]
    return ["head", model_info(cfg.model).stages[-1], "all"]


def _start_params(start: str, cfg: RunConfig) -> dict[str, Any]:
    """The RunConfig fields that make `start` ("random", "imagenet", "nih", "xrv[:<name>]"):
    which weights, from where."""
    start, _, xrv = start.partition(":")
    imagenet = "imagenet" if isinstance(RunConfig.pretrained, str) else True
    if start == "random":
        return {"pretrained": False, "init_checkpoint": ""}
    if start == "imagenet":
        return {"pretrained": imagenet, "init_checkpoint": ""}
    if start == "nih":
        path = cfg.init_checkpoint or str(nih_checkpoint(cfg.checkpoint_dir))
        return {"pretrained": False, "init_checkpoint": path}
    if start == "xrv":
        return {"pretrained": f"xrv:{xrv or XRV_DEFAULT}", "init_checkpoint": ""}
    raise ValueError(f"unknown starting point {start!r}; choose from {list(START_POINTS)}")


def nih_checkpoint(checkpoint_dir: str | Path) -> Path:
    """02's part A `best.pt`: `02_chexnet_nih`, else its lowest-seed run (`-p seed=1` names
    it `02_chexnet_nih.s1`)."""
    from ..evaluation.results import primary_run

    root = Path(checkpoint_dir)
    names = [p.parent.name for p in root.glob(f"{NIH_RUN}*/best.pt")] if root.is_dir() else []
    return root / (primary_run(NIH_RUN, names) or NIH_RUN) / "best.pt"


def _arm_config(cfg: RunConfig, start: str, stage: str) -> RunConfig:
    """The arm's validated config: the notebook's, with its start, stage and run name.

    Built through `make_config`, so a value this version cannot take (a weight name in a
    boolean `pretrained`) is a ConfigError here, not a silent ImageNet download later."""
    params = {**cfg.to_dict(), **_start_params(start, cfg), "trainable_from": stage,
              "step": f"{cfg.step}_{start.partition(':')[0]}_{stage}",
              "reports_dir": str(Path(cfg.reports_dir) / "transfer")}
    return make_config(params, profile=cfg.profile)


def _unavailable(arm: Arm, known: dict[str, str]) -> str:
    """Why the arm's starting weights cannot be had here ("" = they can: model built).
    `known`: start → reason already found (one failed download per start, not per stage)."""
    from ..models.provenance import PretrainedWeightsError
    from .experiment import build_model

    path = arm.cfg.init_checkpoint
    if path and not Path(path).is_file():
        return f"no {path}: run 02_chexnet (its part A, {NIH_RUN}) first"
    if path:
        from ..training.checkpoint import CheckpointError, load_checkpoint

        try:
            trained = load_checkpoint(path).get("model_name") or arm.cfg.model
        except CheckpointError:  # a plain state_dict: create_model checks its keys
            trained = arm.cfg.model
        if not (trained == arm.cfg.model or {trained, arm.cfg.model} <= {"chexnet", "densenet121"}):
            return f"{path} holds a {trained}, not a {arm.cfg.model}: set model={trained!r}"
    if arm.start in known:
        return known[arm.start]
    try:
        arm.model = build_model(arm.cfg, 1)
    except (PretrainedWeightsError, OSError) as err:  # the weights, whatever the stage
        known[arm.start] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
        return known[arm.start]
    except (ValueError, TypeError) as err:  # e.g. a stage the model does not have
        return f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
    return ""


def plan_arms(cfg: RunConfig) -> list[Arm]:
    """Every (start, stage) arm of `cfg.transfer_starts` × `stages_for(cfg)`, each with its
    config or the reason it is skipped.

    Random init trains only with `stage="all"` (frozen random features teach nothing the
    comparison needs). Building each model here checks that its weights exist (ImageNet
    offline, a missing NIH checkpoint, torchxrayvision weights not downloaded).
    """
    arms, starts = [], [s.strip() for s in cfg.transfer_starts.split(",") if s.strip()]
    known: dict[str, str] = {}
    for start in starts:
        for stage in stages_for(cfg):
            if start == "random" and stage != "all":
                continue
            arm = Arm(start, stage)
            try:
                arm.cfg = _arm_config(cfg, start, stage)
            except (ConfigError, ValueError) as err:
                arm.skipped = (f"this version's `pretrained` takes no weight names, so "
                               f"{start!r} cannot load ({err})" if start.startswith("xrv")
                               else str(err))
            arm.skipped = arm.skipped or _unavailable(arm, known)
            arms.append(arm)
    if "random" in starts and not any(a.start == "random" for a in arms):
        raise ConfigError(f"transfer_stages={cfg.transfer_stages!r} must include 'all' for "
                          f"the random-init reference arm")
    if cfg.dataset == "rsna" and any(a.start == "nih" and not a.skipped for a in arms):
        _warn_unless_leak_free(cfg)
    return arms


def _warn_unless_leak_free(cfg: RunConfig) -> None:
    """RSNA's films are NIH films: the NIH start is leak-free on RSNA only if 02's part A
    dropped the patients behind RSNA's val/test images (its results record how many)."""
    import json
    import warnings

    from ..evaluation.results import primary_results

    path = primary_results(Path(cfg.reports_dir) / "results", NIH_RUN)  # `.s<seed>` unless 42
    data = json.loads(path.read_text()).get("data", {}) if path.is_file() else {}
    if "dropped_for_rsna_overlap" not in data:
        warnings.warn(f"{path} does not show that part A left out the NIH patients behind "
                      f"RSNA's val/test images (02_chexnet with dataset='rsna' and the RSNA->NIH "
                      f"mapping): the nih arms' RSNA test numbers may score films they trained "
                      f"on", stacklevel=3)


def run_arms(arms: list[Arm], manifest: pd.DataFrame, ctx: RunContext) -> list[Arm]:
    """Train and evaluate every runnable arm on the same manifest (one split for all)."""
    from ..data.dataset import class_names_for, make_loaders
    from ..models.registry import normalisation
    from .experiment import Experiment, evaluate_and_record, train

    for arm in (a for a in arms if not a.skipped):
        cfg, (lr, why) = arm.cfg, arm.cfg.learning_rate()
        trainable = sum(p.numel() for p in arm.model.parameters() if p.requires_grad)
        print(f"--- {arm.name}: {trainable:,} trainable parameters, lr {lr:g} ({why})",
              flush=True)
        exp = Experiment(cfg=cfg, manifest=manifest, class_names=class_names_for(cfg),
                         loaders=make_loaders(cfg, manifest,
                                                      normalisation(cfg.model, cfg.pretrained)), model=arm.model)
        train(exp, ctx)
        evaluate_and_record(exp, ctx)  # reloads best.pt into exp.model
        exp.results["trainable_params"] = trainable
        arm.experiment, arm.model = exp, None
    return arms


def _test(arm: Arm):
    return arm.experiment.evaluation["predictions"]["test"]


def paired_auroc(a: Arm, b: Arm, n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """AUROC(a) − AUROC(b) on the same test images: a paired bootstrap over patients (each
    resample scores both arms; `utils.evaluation.stats.paired_bootstrap`) for the 95% CI and one p,
    and DeLong's paired test (variance clustered by patient) for the other."""
    from ..evaluation.stats import paired_bootstrap

    pa, pb = _test(a), _test(b)
    if list(pa.paths) != list(pb.paths):
        raise ValueError(f"{a.name} and {b.name} were tested on different images")
    y, patients = pa.targets[:, 0], list(pa.patient_ids)
    boot = paired_bootstrap(y, pa.probs[:, 0], 0.5, pb.probs[:, 0], 0.5, groups=patients,
                            n_boot=n_boot, seed=seed, metrics=("auroc",))["auroc"]
    return {"delta_auroc": boot["delta"], "delta_lo": boot["lo"], "delta_hi": boot["hi"],
            "p_bootstrap": boot["p_value"], "p_delong": _delong(y, pa.probs[:, 0],
                                                                pb.probs[:, 0], patients)}


def _delong(y: np.ndarray, p_a: np.ndarray, p_b: np.ndarray,
            patients: list[str] | None = None) -> float:
    """Two-sided p of DeLong's paired AUROC test (`utils.evaluation.stats`, variance clustered by
    patient); NaN when a class is missing from the test split."""
    from ..evaluation.stats import delong_test

    try:
        return float(delong_test(y, p_a, p_b, groups=patients)["p_value"])
    except ValueError:
        return float("nan")


def transfer_table(arms: list[Arm], reference: str = "random/all",
                   n_boot: int = 1000) -> pd.DataFrame:
    """One row per arm that ran: start, stage, trainable parameters, the learning rate,
    test AUROC (95% CI), F1, sensitivity, specificity at the validation threshold, and the
    paired AUROC difference against `reference` (the random-init arm when it ran)."""
    ran = [a for a in arms if not a.skipped]
    ref = next((a for a in ran if a.name == reference), None)
    rows = []
    for arm in ran:
        res, test = arm.experiment.results, arm.experiment.results["test"]
        row = {"start": arm.start, "trainable_from": arm.stage,
               "trainable_params": res.get("trainable_params"),
               "lr": res["training"]["lr"], "best_epoch": res["training"]["best_epoch"],
               "auroc": test["auroc"], "auroc_lo": test["auroc_ci"][0],
               "auroc_hi": test["auroc_ci"][1], "f1": test["f1"],
               "sensitivity": test.get("sensitivity", test["recall"]), "specificity": test["specificity"],
               "threshold": res["threshold"]["value"]}
        if ref is not None and arm is not ref:
            row.update({f"{k} vs {reference}": v
                        for k, v in paired_auroc(arm, ref, n_boot).items()})
        rows.append(row)
    table = pd.DataFrame(rows)
    table.attrs["reference"] = reference
    return table.round(4)


def skipped_table(arms: list[Arm]) -> pd.DataFrame:
    """The arms that did not run, and why."""
    return pd.DataFrame([{"start": a.start, "trainable_from": a.stage, "why skipped": a.skipped}
                         for a in arms if a.skipped],
                        columns=["start", "trainable_from", "why skipped"])


def learning_curves(arms: list[Arm]) -> dict[str, list[dict]]:
    """Arm name → its per-epoch history rows (for `plots.plot_learning_curves`)."""
    return {a.name: list(a.experiment.history.epochs) for a in arms if not a.skipped}


def roc_curves(arms: list[Arm]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Arm name → (test targets, test probabilities), for `plots.plot_roc_pr`."""
    return {a.name: (_test(a).targets[:, 0], _test(a).probs[:, 0]) for a in arms if not a.skipped}


def write_summary(cfg: RunConfig, arms: list[Arm], table: pd.DataFrame,
                  synthetic: bool) -> Path:
    """09's own results file (`<reports>/results/<step>.json`): the arms' table and skips.
    No `test` block, so `load_results` (the comparison) does not take it for a model run."""
    from ..evaluation.results import _clean
    from ..fileio import atomic_write_json

    record = {"step": cfg.step, "plan_step": cfg.step, "kind": "transfer",
              "data": {"dataset": cfg.dataset, "synthetic": bool(synthetic)},
              "model": {"name": cfg.model}, "reference": table.attrs.get("reference"),
              "arms": table.to_dict(orient="records"),
              "skipped": skipped_table(arms).to_dict(orient="records"),
              "arm_results": str(Path(cfg.reports_dir) / "transfer" / "results"),
              "config": cfg.to_dict()}
    return atomic_write_json(Path(cfg.reports_dir) / "results" / f"{cfg.step}.json",
                             _clean(record))
