"""Named recipes: the ResNet ablation's variants as parameter sets.

Each variant changes a few recipe knobs over the previous one, as the study did. They sit
between the profile (scale knobs) and explicit parameters: a `-p loss=bce` still wins.
"""
from __future__ import annotations

from typing import Any

__all__ = ["ABLATION_VARIANTS", "recipe_for"]

# The study ran its ablation v1 → final on ResNet-50; run_all swaps in ResNet-18 for the
# CPU-sized profiles (demo, smoke), as it swaps ViT-B for ViT-Ti.
_BASE_V1: dict[str, Any] = {
    "model": "resnet50", "augmentation": "basic", "loss": "bce", "sampler": "none",
    "scheduler": "none", "threshold_policy": "fixed", "threshold": 0.5, "tta": False,
    "early_stopping": 0, "dropout": 0.0,
}

ABLATION_VARIANTS: dict[str, dict[str, Any]] = {
    # the study's own Keras-style CNN, trained from scratch
    "cnn": {**_BASE_V1, "model": "simple_cnn", "pretrained": False},
    # hand-written ResNet-18, no regularisation: the baseline of the regularisation ablation
    "resnet18_scratch_noreg": {**_BASE_V1, "model": "resnet18_scratch", "pretrained": False,
                               "augmentation": "none", "dropout": 0.0},
    # the same network with dropout before the head and basic augmentation
    "resnet18_scratch": {**_BASE_V1, "model": "resnet18_scratch", "pretrained": False,
                         "augmentation": "basic", "dropout": 0.5},
    # v1: transfer learning, basic augmentation, no imbalance handling, BCE, threshold 0.5
    "v1": dict(_BASE_V1),
    # v2: stronger augmentation (RandomResizedCrop 0.8-1), balanced sampler and pos_weight.
    # Sampler *and* pos_weight both correct the imbalance (the study did both); v3 drops one.
    "v2": {**_BASE_V1, "augmentation": "strong", "sampler": "balanced", "loss": "weighted_bce"},
    # v3: ColorJitter 0.2 + rotation 15, pos_weight only, threshold 0.6
    "v3": {**_BASE_V1, "augmentation": "v3", "loss": "weighted_bce", "threshold": 0.6},
    # final: focal loss + sampler + cosine + early stopping + TTA + threshold chosen on val.
    # Focal without alpha: the balanced sampler already evens the classes, and alpha 0.25
    # (RetinaNet's) would weight positives down again (README "Recipe benchmark")
    "final": {**_BASE_V1, "augmentation": "strong", "loss": "focal", "focal_alpha": -1.0,
              "sampler": "balanced",
              "scheduler": "cosine", "early_stopping": 3, "tta": True,
              "threshold_policy": "max_f1"},
}


def recipe_for(variant: str) -> dict[str, Any]:
    """The parameter set of an ablation variant ("" = no recipe)."""
    if not variant:
        return {}
    if variant not in ABLATION_VARIANTS:
        raise ValueError(f"unknown ablation variant {variant!r}; choose one of "
                         f"{list(ABLATION_VARIANTS)}")
    return dict(ABLATION_VARIANTS[variant])
