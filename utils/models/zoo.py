"""The built-in entries: every architecture the notebooks train, one decorated factory each.

Every model maps a grayscale batch `B×1×H×W` to logits `B×num_classes` (no sigmoid: the
losses and the evaluation apply it). The hand-written networks (the study's CNN and the
ResNet-18 built from `BasicBlock`) live in `nets.py`; the others come from torchvision,
efficientnet-pytorch and timm with a 1-channel stem and the study's head.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import weights
from .base import SCRATCH_GRAY, TIMM_GRAY, register_alias, register_model
from .nets import ResNet18Scratch, SimpleCNN
from .nets import linear_head as _linear_head
from .weights import PretrainedWeightsError

__all__ = ["tokens_to_grid"]



def tokens_to_grid(tokens: torch.Tensor, num_prefix_tokens: int = 1) -> torch.Tensor:
    """ViT/Mixer tokens `B×(P+N)×C` → `B×C×h×w` feature maps for pytorch-grad-cam.

    Drops the `P` prefix tokens (ViT's class token; Mixer has none: P=0) and folds the N
    patch tokens into a square grid (h = w = image_size / patch_size).

    Example:
        >>> tokens_to_grid(torch.zeros(2, 17, 192), 1).shape
        torch.Size([2, 192, 4, 4])
    """
    patches = tokens[:, num_prefix_tokens:, :]
    side = int(round(patches.shape[1] ** 0.5))
    if side * side != patches.shape[1]:
        raise ValueError(f"{patches.shape[1]} patch tokens do not form a square grid; "
                         f"use square images or pass a model-specific `reshape`")
    return patches.reshape(patches.shape[0], side, side, patches.shape[2]).permute(0, 3, 1, 2)


def _cam_features(m: nn.Module) -> nn.Module: return m.features[-1]   # last block / relu5


def _cam_resnet(m: nn.Module) -> nn.Module: return m.layer4[-1]


def _cam_effnet(m: nn.Module) -> nn.Module: return m._bn1             # last feature map


def _cam_vit(m: nn.Module) -> nn.Module: return m.blocks[-1].norm1    # pytorch-grad-cam's choice


def _cam_mixer(m: nn.Module) -> nn.Module: return m.blocks[-1]


def _vit_tokens(t: torch.Tensor) -> torch.Tensor: return tokens_to_grid(t, 1)   # class token


def _patch_tokens(t: torch.Tensor) -> torch.Tensor: return tokens_to_grid(t, 0)  # no prefix


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
