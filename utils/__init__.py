"""cxr-pneumonia's shared package: every line of logic the notebooks need lives here.

Modules (see docs/ARCHITECTURE.md): config, data (sources, splits, dataset, cache, demo),
transforms, losses, samplers, models (+ nets, weights, xrv), train (+ checkpoint, history,
rngstate, distributed, launch, train_cli), evaluate,
cam, plots, results, summaries, stats, comparison (+ comparison_view), eda, gallery,
experiment, notebook, predict.

The public names below are imported lazily (PEP 562), so `import utils` stays light and
`from utils import plots` does not drag in the training stack.
"""
from __future__ import annotations

import importlib
from typing import Any

from .config import PROFILES, ConfigError, RunConfig, make_config

_LAZY = {
    "setup": "notebook", "RunContext": "notebook",
    "create_model": "models", "list_models": "models", "model_info": "models",
    "count_parameters": "models", "PretrainedWeightsError": "models",
    "describe_weights": "weights",
    "build_transform": "transforms", "build_loss": "losses", "FocalLoss": "losses",
    "make_sampler": "samplers",
    "fit": "train", "History": "train",
    "load_model": "checkpoint", "load_checkpoint": "checkpoint",
    "update_checkpoint": "checkpoint", "checkpoint_bytes": "checkpoint",
    "train_distributed": "launch", "DistributedTrainingError": "launch",
    "evaluate_run": "evaluate", "binary_metrics": "evaluate",
    "choose_threshold": "evaluate", "bootstrap_ci": "evaluate", "calibration": "evaluate",
    "CamExplainer": "cam", "compute_cams": "cam", "localisation_scores": "cam",
    "build_results": "results", "write_results": "results", "load_results": "results",
    "run_experiment": "experiment",
}

__all__ = ["RunConfig", "ConfigError", "PROFILES", "make_config", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'utils' has no attribute {name!r}")
