"""The model registry: every architecture the notebooks train, by name (timm's pattern).

Adding a model is one decorated factory; tests parametrised over `list_models()` cover it.
Every model maps a grayscale batch `B×1×H×W` to logits `B×num_classes` (no sigmoid: the
losses and `evaluate` apply it) and carries `model.info`, its data settings (input size,
normalisation) and Grad-CAM layer, so nothing downstream copies them by hand, and
`model.pretrained_weights`, the record of the weights it started from (`utils.weights`).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
from torch import nn

from . import weights
from .cam import tokens_to_grid
from .transfer import freeze_before, load_init_weights
from .weights import PretrainedWeightsError
from .nets import BasicBlock, ResNet18Scratch, SimpleCNN, linear_head as _linear_head

__all__ = ["ModelInfo", "PretrainedWeightsError", "register_model", "list_models",
           "model_info", "create_model", "count_parameters", "register_alias",
           "SimpleCNN", "BasicBlock", "ResNet18Scratch"]

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


def list_models(aliases: bool = False) -> list[str]:
    """The registry's entries (with `aliases`, their other names too, e.g. `chexnet`)."""
    return sorted(n for n in _REGISTRY if aliases or n not in _ALIASES)


def model_info(name: str, pretrained: bool | str = False) -> ModelInfo:
    """The entry's data settings for weights from `pretrained`: ImageNet or none share the
    entry's; torchxrayvision weights bring their own scaling and input size (`utils.xrv`)."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; choose one of {list_models(aliases=True)}")
    info, source = _REGISTRY[name][1], weights.canonical_pretrained(pretrained)
    if isinstance(source, str):
        from .xrv import XRV_NORM, XRV_WEIGHTS

        size = XRV_WEIGHTS[source.removeprefix("xrv:")].input_size
        info = replace(info, input_size=size, mean=XRV_NORM[0], std=XRV_NORM[1])
    return info


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with `requires_grad`)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# --- Grad-CAM handles (module-level functions, not lambdas, so ModelInfo pickles) --------

def _cam_features(m: nn.Module) -> nn.Module: return m.features[-1]   # last block / relu5
def _cam_resnet(m: nn.Module) -> nn.Module: return m.layer4[-1]
def _cam_effnet(m: nn.Module) -> nn.Module: return m._bn1             # last feature map
def _cam_vit(m: nn.Module) -> nn.Module: return m.blocks[-1].norm1    # pytorch-grad-cam's choice
def _cam_mixer(m: nn.Module) -> nn.Module: return m.blocks[-1]
def _vit_tokens(t: torch.Tensor) -> torch.Tensor: return tokens_to_grid(t, 1)   # class token
def _patch_tokens(t: torch.Tensor) -> torch.Tensor: return tokens_to_grid(t, 0)  # no prefix


# --- helpers shared by the factories -------------------------------------------------

def _set_in_chans(conv: nn.Conv2d, in_chans: int, pretrained: bool) -> None:
    """Adapt a 3-channel stem in place: pretrained RGB kernels are summed (timm's
    `adapt_input_conv`), so a gray image gets the response of its RGB replica."""
    if conv.in_channels == in_chans:
        return
    if pretrained:
        from timm.models import adapt_input_conv
        weight = adapt_input_conv(in_chans, conv.weight.detach())
    else:
        weight = torch.empty(conv.out_channels, in_chans // conv.groups, *conv.kernel_size)
        nn.init.kaiming_normal_(weight, mode="fan_out", nonlinearity="relu")
    conv.in_channels = in_chans
    conv.weight = nn.Parameter(weight)


# --- the entries ---------------------------------------------------------------------

@register_model(family="cnn", head="classifier", cam_layer=_cam_features, norm=SCRATCH_GRAY)
def simple_cnn(num_classes: int, pretrained: bool, in_chans: int, dropout: float,
               image_size: int | None) -> nn.Module:
    """The study's Keras-style CNN (always random init)."""
    _no_weights("simple_cnn", pretrained)
    return SimpleCNN(num_classes, in_chans, last_dropout=dropout or 0.3)


@register_model(family="resnet", head="fc", cam_layer=_cam_resnet, stages=("layer3", "layer4"),
                norm=SCRATCH_GRAY)
def resnet18_scratch(num_classes: int, pretrained: bool, in_chans: int, dropout: float,
                     image_size: int | None) -> nn.Module:
    """ResNet-18 written by hand from `BasicBlock` (the study's exercise)."""
    _no_weights("resnet18_scratch", pretrained)
    return ResNet18Scratch(num_classes, in_chans, dropout)


def _torchvision(arch: str, num_classes: int, pretrained: bool, in_chans: int,
                 dropout: float) -> nn.Module:
    import torchvision
    if pretrained:
        with weights.from_hub("torchvision", arch) as src:
            model = torchvision.models.get_model(arch, weights="DEFAULT")
        model.pretrained_weights = weights.weights_record("imagenet", True, src)
    else:
        model = torchvision.models.get_model(arch, weights=None)
    if arch.startswith("densenet"):
        _set_in_chans(model.features.conv0, in_chans, pretrained)
        # torchvision's forward applies F.relu(features, inplace=True) after norm5, so a
        # CAM at norm5 stored the ReLU's values on CPU (pytorch-grad-cam's .cpu() is the
        # same memory) and norm5's on CUDA (a copy). The CAM layer is an out-of-place ReLU
        # appended instead: the in-place ReLU of its non-negative output changes nothing.
        # nn.Threshold(0, 0) is that ReLU with a backward that reads its input (nn.ReLU's
        # reads its output, which the in-place op bumps: autograd would refuse). No
        # parameters: state_dict keys stay as they were.
        model.features.add_module("relu5", nn.Threshold(0.0, 0.0))
        model.classifier = _linear_head(model.classifier.in_features, num_classes, dropout)
    else:
        _set_in_chans(model.conv1, in_chans, pretrained)
        model.fc = _linear_head(model.fc.in_features, num_classes, dropout)
    return model


@register_model(family="resnet", head="fc", cam_layer=_cam_resnet, stages=("layer3", "layer4"))
def resnet18(num_classes, pretrained, in_chans, dropout, image_size) -> nn.Module:
    return _torchvision("resnet18", num_classes, pretrained, in_chans, dropout)


@register_model(family="resnet", head="fc", cam_layer=_cam_resnet, stages=("layer3", "layer4"))
def resnet50(num_classes, pretrained, in_chans, dropout, image_size) -> nn.Module:
    return _torchvision("resnet50", num_classes, pretrained, in_chans, dropout)


@register_model(family="densenet", head="classifier", cam_layer=_cam_features,
                stages=("denseblock3", "denseblock4"))
def densenet121(num_classes, pretrained, in_chans, dropout, image_size) -> nn.Module:
    return _torchvision("densenet121", num_classes, pretrained, in_chans, dropout)


# CheXNet (Rajpurkar et al. 2017) *is* an ImageNet DenseNet-121 with a sigmoid head (1 output
# for pneumonia, 14 for NIH; the sigmoid lives in the loss and in `evaluate`): what makes it
# CheXNet is its training on NIH, 02_chexnet's part A. One network, two names.
register_alias("chexnet", "densenet121")


def _efficientnet(variant: str, pretrained: bool, in_chans: int, image_size: int | None,
                  **overrides: Any) -> nn.Module:
    """efficientnet-pytorch `efficientnet-<variant>`, ImageNet weights from its hub cache;
    `overrides` are its global params (e.g. `drop_connect_rate`)."""
    from efficientnet_pytorch import EfficientNet
    arch, size = f"efficientnet-{variant}", {"image_size": image_size or 224}
    if not pretrained:
        model = EfficientNet.from_name(arch, **size, **overrides)
    else:
        with weights.from_hub("efficientnet-pytorch", arch) as src:
            model = EfficientNet.from_pretrained(arch, **size, **overrides)
        model.pretrained_weights = weights.weights_record("imagenet", True, src)
    _set_in_chans(model._conv_stem, in_chans, pretrained)  # its own in_channels re-inits
    return model


def _study_head(model: nn.Module, num_classes: int, dropout: float) -> nn.Module:
    """The study's EfficientNet head: features → 512 → classes (ReLU, dropout 0.3)."""
    model._fc = nn.Sequential(nn.Linear(model._fc.in_features, 512), nn.ReLU(inplace=True),
                              nn.Dropout(dropout or 0.3), nn.Linear(512, num_classes))
    return model


_EFFNET = dict(family="efficientnet", head="_fc", cam_layer=_cam_effnet,
               stages=("blocks_last",))


@register_model(**_EFFNET)
def efficientnet_b4(num_classes, pretrained, in_chans, dropout, image_size) -> nn.Module:
    """efficientnet-pytorch B4 with the study's head 1792→512→classes (dropout 0.3).

    B4's native resolution is 380; like every entry it defaults to 224 here. `image_size`
    sets the static "same" padding of this implementation (other sizes still run)."""
    return _study_head(_efficientnet("b4", pretrained, in_chans, image_size), num_classes,
                       dropout)


@register_model(**_EFFNET)
def efficientnet_b0(num_classes, pretrained, in_chans, dropout, image_size) -> nn.Module:
    """B0, the φ = 0 base of the family (B4 = B0 scaled 1.4× wider, 1.8× deeper), with the
    study's head 1280→512→classes: the demo/smoke stand-in for B4 on a CPU (B4 trains at
    ~0.55× ResNet-18's speed at 64 px, B0 at ~1.3×).

    Without stochastic depth (`drop_connect_rate` 0, B0's default 0.2): a stand-in trained
    from scratch for 4 epochs on a few hundred images needs every block's signal. Measured
    on demo Kermany (64 px, 4 epochs, batch 16, BCE, test AUROC): 0.644 with 0.2, 0.941
    without (the 0.2 run also had BatchNorm momentum 0.1, which at 0 made no difference)."""
    return _study_head(_efficientnet("b0", pretrained, in_chans, image_size,
                                     drop_connect_rate=0.0), num_classes, dropout)


def _timm(arch: str, num_classes: int, pretrained: bool, in_chans: int, dropout: float,
          image_size: int | None) -> nn.Module:
    import timm
    size = image_size or 224
    if size % 16:
        raise ValueError(f"image_size={size} must be a multiple of 16 for {arch} (16-px patches)")
    if pretrained and arch.startswith("mixer") and size != 224:
        raise ValueError(f"{arch} pretrained weights need image_size=224: its token-mixing "
                         f"MLPs are sized by the patch count (got {size}); or pretrained=False")
    if pretrained and not timm.models.get_pretrained_cfg(arch).has_weights:
        raise PretrainedWeightsError(f"timm has no pretrained weights for {arch}: pass "
                                     f"pretrained=False or allow_random_init=True")
    kwargs = dict(num_classes=num_classes, in_chans=in_chans, img_size=size, drop_rate=dropout)
    if not pretrained:
        return timm.create_model(arch, pretrained=False, **kwargs)
    with weights.from_hub("timm", arch):
        model = timm.create_model(arch, pretrained=True, **kwargs)
    # the file it loaded: the hub cache has it now (downloaded or placed there by hand)
    model.pretrained_weights = weights.weights_record("imagenet", True,
                                                      weights.locate("timm", arch))
    return model


_VIT = dict(family="vit", head="head", cam_layer=_cam_vit, cam_reshape=_vit_tokens,
            stages=("last_blocks",), norm=TIMM_GRAY)
_MIXER = dict(_VIT, family="mixer", cam_layer=_cam_mixer, cam_reshape=_patch_tokens)


@register_model(**_VIT)
def vit(num_classes, pretrained, in_chans, dropout, image_size) -> nn.Module:
    """ViT-B/16, the study's transformer."""
    return _timm("vit_base_patch16_224", num_classes, pretrained, in_chans, dropout, image_size)


@register_model(**_VIT)
def vit_small(num_classes, pretrained, in_chans, dropout, image_size) -> nn.Module:
    return _timm("vit_small_patch16_224", num_classes, pretrained, in_chans, dropout, image_size)


@register_model(**_VIT)
def vit_tiny(num_classes, pretrained, in_chans, dropout, image_size) -> nn.Module:
    """ViT-Ti/16 (12 blocks, 192 wide)."""
    return _timm("vit_tiny_patch16_224", num_classes, pretrained, in_chans, dropout, image_size)


@register_model(**dict(_VIT, cam_reshape=_patch_tokens))  # no class token: patches only
def vit_mini(num_classes, pretrained, in_chans, dropout, image_size) -> nn.Module:
    """A 4-block, 192-wide "simple ViT" (Beyer et al. 2022, "Better plain ViT baselines"):
    global average pooling instead of a class token and fixed 2-D sin-cos position
    embeddings, built with timm's VisionTransformer, for the demo profile on a CPU.

    Measured on the demo's Kermany set (487 training images, 64 px, 8 epochs, lr 3e-4): test
    AUROC 0.975; the same 4 blocks with a class token and learned positions 0.69-0.81, and
    the 12-block ViT-Ti did not leave chance level (train loss stuck at 0.69). Learned
    positions start near zero, so from scratch ViT must first learn where the bright
    mediastinum is before a bright lateral patch can mean pneumonia."""
    from timm.layers import build_sincos2d_pos_embed
    from timm.models.vision_transformer import VisionTransformer

    _no_weights("vit_mini", pretrained)
    size = image_size or 224
    if size % 16:
        raise ValueError(f"image_size={size} must be a multiple of 16 for vit_mini")
    model = VisionTransformer(img_size=size, patch_size=16, in_chans=in_chans,
                              num_classes=num_classes, embed_dim=192, depth=4, num_heads=3,
                              drop_rate=dropout, class_token=False, global_pool="avg")
    with torch.no_grad():
        model.pos_embed.copy_(build_sincos2d_pos_embed([size // 16] * 2, 192).unsqueeze(0))
    model.pos_embed.requires_grad_(False)  # fixed, as in the simple ViT
    return model


@register_model(**_MIXER)
def mixer(num_classes, pretrained, in_chans, dropout, image_size) -> nn.Module:
    return _timm("mixer_b16_224", num_classes, pretrained, in_chans, dropout, image_size)


@register_model(**_MIXER)
def mixer_small(num_classes, pretrained, in_chans, dropout, image_size) -> nn.Module:
    """Mixer-S/16 (timm ships no pretrained weights for it: pretrained=False only)."""
    return _timm("mixer_s16_224", num_classes, pretrained, in_chans, dropout, image_size)


@register_model(**_MIXER)
def mixer_tiny(num_classes, pretrained, in_chans, dropout, image_size) -> nn.Module:
    """A 4-block, 256-wide Mixer/16 built with timm's MlpMixer, for the demo profile on a
    CPU (Mixer-S/16 is 18M parameters); no pretrained weights exist for this size."""
    from timm.models.mlp_mixer import MlpMixer

    _no_weights("mixer_tiny", pretrained)
    size = image_size or 224
    if size % 16:
        raise ValueError(f"image_size={size} must be a multiple of 16 for mixer_tiny")
    return MlpMixer(num_classes=num_classes, img_size=size, in_chans=in_chans, patch_size=16,
                    num_blocks=4, embed_dim=256, drop_rate=dropout)


def _no_weights(name: str, pretrained: bool) -> None:
    if pretrained:
        raise PretrainedWeightsError(f"{name} has no pretrained weights (it is trained from "
                                     f"scratch): pass pretrained=False")


# --- the factory ---------------------------------------------------------------------

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
            "xrv:<weights>" (torchxrayvision's, `utils.xrv`; densenet121/chexnet/resnet50).
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
    """Random init: BatchNorm running statistics as a plain average over all batches seen.

    They start at mean 0 / var 1, far from a fresh network's real statistics, and with the
    default momentum (0.1) they need ~50 steps to forget that start. Until then eval-mode
    outputs collapse (measured: simple_cnn gave every image the same score after 40 steps,
    AUROC 0.16; with a cumulative average, AUROC 1.0 on the same toy data). Pretrained
    weights bring real statistics, so they keep PyTorch's default.

    `momentum=None` is the mark. Left to torch, it costs a host sync per BN layer per
    training step (`float(num_batches_tracked)`); `fit` drives the same average from a
    host-side counter instead (`utils.schedules.BatchNormClock`), bit for bit.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = None


def _build(name: str, num_classes: int, pretrained: bool | str, in_chans: int,
           dropout: float, image_size: int | None, fallback: bool) -> nn.Module:
    """The factory's model with `pretrained_weights` set (`utils.weights.weights_record`)."""
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
