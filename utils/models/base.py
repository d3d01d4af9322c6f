"""The registry's data: `ModelInfo`, the table of entries, and the decorator that fills it.

Nothing here builds a network: `zoo.py` registers the built-in entries with
`register_model`, `registry.py` creates models from the table (timm's `_registry` /
`_factory` split). A new architecture is one decorated factory in `zoo.py` (or in your own
module, imported before `create_model` is called).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

__all__ = ["ModelInfo", "register_model", "register_alias", "IMAGENET_GRAY", "TIMM_GRAY",
           "SCRATCH_GRAY"]


# 1-channel normalisation = the mean of the RGB statistics the weights were trained with
# (summing the stem's RGB kernels assumes every channel saw the same normalised value).
IMAGENET_GRAY = (0.449, 0.226)   # torchvision / efficientnet-pytorch ImageNet weights


TIMM_GRAY = (0.5, 0.5)           # timm's augreg ViT and Mixer weights use mean = std = 0.5


SCRATCH_GRAY = (0.5, 0.25)       # no pretrained statistics: centre [0, 1] pixels roughly


@dataclass(frozen=True)
class ModelInfo:
    """A registry entry's data settings and the handles that CAM and fine-tuning need.

    `head` is the attribute holding the classifier: trained alone by `trainable_from="head"`
    and re-initialised by `init_checkpoint` when the class count differs.
    """
    name: str
    input_size: int
    mean: float
    std: float
    cam_layer: Callable[[nn.Module], nn.Module]
    cam_reshape: Callable[[torch.Tensor], torch.Tensor] | None
    family: str
    stages: tuple[str, ...]
    head: str


_REGISTRY: dict[str, tuple[Callable[..., nn.Module], ModelInfo]] = {}


_ALIASES: dict[str, str] = {}   # alias -> the entry it names (`register_alias`)


def register_model(*, family: str, head: str, cam_layer: Callable[[nn.Module], nn.Module],
                   stages: tuple[str, ...] = (), norm: tuple[float, float] = IMAGENET_GRAY,
                   cam_reshape: Callable | None = None, input_size: int = 224) -> Callable:
    """Decorator: register `fn(num_classes, pretrained, in_chans, dropout, image_size)`."""
    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        info = ModelInfo(fn.__name__, input_size, norm[0], norm[1], cam_layer, cam_reshape,
                         family, ("all", "head", *stages), head)
        _REGISTRY[fn.__name__] = (fn, info)
        return fn
    return wrap


def register_alias(alias: str, name: str) -> None:
    """Another name for the entry `name`: its factory and settings, with `info.name` the
    alias (checkpoints and results keep the name a run used)."""
    from dataclasses import replace

    factory, info = _REGISTRY[name]
    _REGISTRY[alias] = (factory, replace(info, name=alias))
    _ALIASES[alias] = name
