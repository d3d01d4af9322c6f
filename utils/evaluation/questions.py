"""The study's two questions as data: which models each compares with CheXNet, and how a
model is found among a test set's runs. The comparison (`utils.evaluation.comparison`) tests them; its
view (`utils.evaluation.comparison_view`) answers them in words; neither imports the other for this.
"""
from __future__ import annotations

from typing import NamedTuple

__all__ = ["Role", "ROLES", "QUESTIONS"]


class Role(NamedTuple):
    """One model of the study's questions: found by its run_all step first, else by the
    first group whose model name starts with one of `prefixes` (and, with `within`, whose
    step starts with it: the ablation's other variants train ResNets too, but only its
    final recipe is "the ResNet" the study compares)."""

    name: str                   # how the answer names it
    step: str
    prefixes: tuple[str, ...]
    within: str | None = None


# the study's two questions, each CheXNet against two models (Holm over those two)
ROLES = {"chexnet": Role("CheXNet", "02_chexnet", ("densenet121", "chexnet")),
         "resnet": Role("ResNet", "03_resnet_ablation_final", ("resnet",),
                        within="03_resnet_ablation_final"),
         "efficientnet": Role("EfficientNet-B4", "04_efficientnet_b4", ("efficientnet",)),
         "vit": Role("ViT", "05_vit", ("vit",)),
         "mixer": Role("Mixer", "06_mlp_mixer", ("mixer",))}
QUESTIONS = {"cnn": ("resnet", "efficientnet"),     # which CNN is best?
             "transformers": ("vit", "mixer")}      # do the transformers match CheXNet?
