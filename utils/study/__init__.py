"""The study that ties the groups together: a notebook's setup, one run end to end
(`experiment`), a step's grid of datasets × seeds, the ablation's recipes, the transfer
experiment, run_all's plan, execution, console and memory, and the cost plan.

The public names below are imported lazily (PEP 562): importing the package costs nothing
until a name is used.
"""
from __future__ import annotations

from ..lazy import lazy_exports

_LAZY = {
    "setup": "notebook",
    "StepGrid": "grid",
    "run_experiment": "experiment",
    "build_model": "experiment",
    "train": "experiment",
    "recipe_for": "recipes",
    "default_plan": "plan",
    "Step": "plan",
}
__all__ = list(_LAZY)

__getattr__ = lazy_exports(__name__, _LAZY)
