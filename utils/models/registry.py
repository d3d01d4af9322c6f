"""The model registry's factory: create a registered model by name (timm's pattern).

Adding a model is one decorated factory (`base.register_model`, the built-ins in `zoo.py`);
tests parametrised over `list_models()` cover it. Every created model carries
`model.info`, its data settings (input size, normalisation) and Grad-CAM layer, so nothing
downstream copies them by hand, and `model.pretrained_weights`, the record of the weights
it started from (`weights.py`).
"""
from __future__ import annotations

import warnings
from dataclasses import replace

from torch import nn

from . import weights, zoo  # noqa: F401 - zoo registers the built-in entries
from .base import _ALIASES, _REGISTRY, ModelInfo
from .transfer import freeze_before, load_init_weights
from .weights import PretrainedWeightsError

__all__ = ["list_models", "model_info", "normalisation", "create_model", "count_parameters"]


def list_models(aliases: bool = False) -> list[str]:
    """The registry's entries (with `aliases`, their other names too, e.g. `chexnet`)."""
    return sorted(n for n in _REGISTRY if aliases or n not in _ALIASES)


def model_info(name: str, pretrained: bool | str = False) -> ModelInfo:
    """The entry's data settings for weights from `pretrained`: ImageNet or none share the
    entry's; torchxrayvision weights bring their own scaling and input size (`utils.models.xrv`)."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; choose one of {list_models(aliases=True)}")
    info, source = _REGISTRY[name][1], weights.canonical_pretrained(pretrained)
    if isinstance(source, str):
        from .xrv import XRV_NORM, XRV_WEIGHTS

        size = XRV_WEIGHTS[source.removeprefix("xrv:")].input_size
        info = replace(info, input_size=size, mean=XRV_NORM[0], std=XRV_NORM[1])
    return info


def normalisation(name: str, pretrained: bool | str = False) -> tuple[float, float]:
    """The 1-channel `(mean, std)` a model's inputs are normalised with, for the data
    loaders (`utils.data.dataset.make_loaders`), which know no models."""
    info = model_info(name, pretrained)
    return info.mean, info.std


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with `requires_grad`)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def create_model(name: str, num_classes: int = 1, pretrained: bool | str = False, *,
                 in_chans: int = 1, dropout: float = 0.0, trainable_from: str = "all",
                 init_checkpoint: str = "", image_size: int | None = None,
                 fallback: bool = False) -> nn.Module:
    """Build a registry model mapping `B×in_chans×H×W` to logits `B×num_classes`.

    Args:
        name: one of `list_models(aliases=True)` (`chexnet` is an alias of `densenet121`).
        num_classes: 1 for binary pneumonia, 14 for NIH multilabel.
        pretrained: the starting weights: `True`/"imagenet" (the torchvision/timm/
            efficientnet hubs, or their caches offline), `False`/"none", or
            "xrv:<weights>" (torchxrayvision's, `utils.models.xrv`; densenet121/chexnet/resnet50).
            `model.pretrained_weights` records what was loaded (file + sha256).
        in_chans: input channels; 1 (grayscale) sums the pretrained RGB stem kernels.
        dropout: rate right before the final linear layer; 0 = the entry's default
            (none for the pretrained backbones, 0.3 for simple_cnn and efficientnet_b4).
        trainable_from: `all`, `head`, or a stage in `model_info(name).stages`: that stage
            and everything after it train, everything before is frozen.
        init_checkpoint: a checkpoint (`model_state`) or plain state_dict to start from; a
            head with another class count is replaced (e.g. NIH 14 → Kermany 1).
        image_size: input resolution (ViT/Mixer need it, a multiple of 16); default 224.
        fallback: when pretrained weights cannot be had, warn and use random init instead
            of raising `PretrainedWeightsError` (RunConfig.allow_random_init); the record
            then says `loaded: False`.
    Example:
        >>> m = create_model("resnet18", num_classes=1, pretrained=False)
        >>> m(torch.zeros(2, 1, 64, 64)).shape, m.info.mean
        (torch.Size([2, 1]), 0.449)
    """
    info = model_info(name)
    if trainable_from not in info.stages:
        raise ValueError(f"trainable_from={trainable_from!r} is not a stage of {name}; "
                         f"valid: {list(info.stages)}")
    model = _build(name, num_classes, pretrained, in_chans, dropout, image_size, fallback)
    model.info = model_info(name, pretrained)  # the data settings follow the weights asked for
    if init_checkpoint:
        load_init_weights(model, info.head, info.name, init_checkpoint)
        model.pretrained_weights["init_checkpoint"] = init_checkpoint  # replaced the backbone
    elif not model.pretrained_weights["loaded"]:
        _cumulative_batchnorm(model)
    freeze_before(model, trainable_from, _stage_prefix(model, info, trainable_from), info.head)
    return model


def _cumulative_batchnorm(model: nn.Module) -> None:
    """Random init: BatchNorm running statistics warm-started from the batches themselves.

    They start at mean 0 / var 1, far from a fresh network's real statistics, and with the
    default momentum (0.1) they need ~50 steps to forget that start. Until then eval-mode
    outputs collapse (measured: simple_cnn gave every image the same score after 40 steps,
    AUROC 0.16; with an average over the batches, AUROC 1.0 on the same toy data). Pretrained
    weights bring real statistics, so they keep PyTorch's default.

    `momentum=None` is the mark. `fit` drives it from a host-side counter
    (`utils.training.schedules.BatchNormClock`): the plain average of the first 10 batches,
    then torch's 0.1, so the statistics follow the weights as they move; left to torch,
    `None` would average every batch of the run (early weights included) at the cost of a
    host sync per BN layer per step (`float(num_batches_tracked)`).
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = None


def _build(name: str, num_classes: int, pretrained: bool | str, in_chans: int,
           dropout: float, image_size: int | None, fallback: bool) -> nn.Module:
    """The factory's model with `pretrained_weights` set (`utils.models.weights.weights_record`)."""
    factory, source = _REGISTRY[name][0], weights.source_name(pretrained)
    try:
        model = factory(num_classes, source == "imagenet", in_chans, dropout, image_size)
        if source.startswith("xrv:"):
            from .xrv import load_xrv

            model.pretrained_weights = load_xrv(model, _REGISTRY[name][1].head, name,
                                                source.removeprefix("xrv:"), num_classes)
    except (OSError, PretrainedWeightsError) as err:  # URLError, HF hub and socket errors
        if source == "none":
            raise
        msg = weights.unavailable_message(name, err) if isinstance(
            err, (OSError, weights.HubUnavailable)) else str(err)
        if not fallback:
            raise PretrainedWeightsError(msg) from None
        warnings.warn(f"{msg}\n-> using RANDOM initial weights for {name} "
                      f"(allow_random_init)", stacklevel=3)
        model = factory(num_classes, False, in_chans, dropout, image_size)
        model.pretrained_weights = weights.weights_record(source, False, reason=msg)
    if not hasattr(model, "pretrained_weights"):
        model.pretrained_weights = weights.weights_record(source, False)
    return model


def _stage_prefix(model: nn.Module, info: ModelInfo, stage: str) -> str:
    """Parameter-name prefix where a stage starts (named_parameters run input → output)."""
    if stage == "all":
        return ""
    if stage == "head":
        return info.head + "."
    if stage == "blocks_last":     # EfficientNet: the last quarter of its MBConv blocks
        n = len(model._blocks)
        return f"_blocks.{n - max(1, n // 4)}."
    if stage == "last_blocks":     # ViT / Mixer: the last 4 transformer/mixer blocks
        return f"blocks.{max(0, len(model.blocks) - 4)}."
    return f"features.{stage}." if info.family == "densenet" else f"{stage}."
