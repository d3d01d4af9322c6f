"""cxr-pneumonia's shared package: every line of logic the notebooks need lives here.

Grouped by concern (docs/ARCHITECTURE.md), each group a subpackage whose imports run one
way, down the list:

    study/       the study that ties them: setup, experiment, grid, plan, run_all's execution
    reports/     figures, captions, words, the step reports, the index, the bundle
    evaluation/  predictions, metrics, statistics, the comparison, CAMs, the gallery
    training/    fit, losses, schedules, checkpoints, RNG state, DDP
    config.py    every knob of a run, checked against the source and model registries
    models/      the registry, hand-written nets, pretrained weights
    data/        sources, manifests, splits, the dataset, the cache, transforms, samplers
    runtime.py, fileio.py, torchio.py, hosted.py, lazy.py   the basics everything may import

The public names below are imported lazily (PEP 562), so `import utils` stays light and
`from utils import RunConfig` does not drag in the training stack.
"""
from __future__ import annotations

from .config import PROFILES, ConfigError, RunConfig, make_config
from .lazy import lazy_exports

_LAZY = {
    "setup": "study.notebook", "RunContext": "runtime",
    "create_model": "models.registry", "list_models": "models.registry",
    "model_info": "models.registry", "count_parameters": "models.registry",
    "PretrainedWeightsError": "models.provenance", "describe_weights": "models.provenance",
    "build_transform": "data.transforms", "make_sampler": "data.samplers",
    "build_loss": "training.losses", "FocalLoss": "training.losses",
    "fit": "training.loop", "History": "training.loop",
    "load_model": "training.checkpoint", "load_checkpoint": "training.checkpoint",
    "update_checkpoint": "training.checkpoint", "checkpoint_bytes": "training.checkpoint",
    "train_distributed": "training.launch", "DistributedTrainingError": "training.launch",
    "evaluate_run": "evaluation.metrics", "binary_metrics": "evaluation.metrics",
    "choose_threshold": "evaluation.metrics", "bootstrap_ci": "evaluation.metrics",
    "calibration": "evaluation.metrics",
    "CamExplainer": "evaluation.cam", "compute_cams": "evaluation.cam",
    "localisation_scores": "evaluation.localisation",
    "build_results": "evaluation.results", "write_results": "evaluation.results",
    "load_results": "evaluation.results",
    "run_experiment": "study.experiment",
}

__all__ = ["RunConfig", "ConfigError", "PROFILES", "make_config", *_LAZY]

__getattr__ = lazy_exports(__name__, _LAZY)
