"""Evaluation: predictions, metrics, thresholds and CIs chosen on validation, statistics
(DeLong, bootstraps, Holm), the comparison and the study's questions, results JSON, CAMs and
where they point, the occlusion check, the gallery and each architecture's anatomy.

The public names below are imported lazily (PEP 562): importing the package costs nothing
until a name is used.
"""
from __future__ import annotations

from ..lazy import lazy_exports

_LAZY = {
    "predict": "metrics",
    "evaluate_run": "metrics",
    "binary_metrics": "metrics",
    "choose_threshold": "metrics",
    "bootstrap_ci": "metrics",
    "calibration": "metrics",
    "CamExplainer": "cam",
    "compute_cams": "cam",
    "localisation_scores": "localisation",
    "build_results": "results",
    "write_results": "results",
    "load_results": "results",
    "load_predictions": "results",
    "build_report": "comparison",
    "write_report": "comparison",
    "delong_test": "stats",
    "paired_bootstrap": "stats",
    "holm": "stats",
}
__all__ = list(_LAZY)

__getattr__ = lazy_exports(__name__, _LAZY)
