"""The two networks written by hand, because writing them is the lesson: the study's
Keras-style CNN and a ResNet-18 built from its residual block. Everything else comes from
torchvision / timm / efficientnet-pytorch through the registry in `utils.models`."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["SimpleCNN", "BasicBlock", "ResNet18Scratch", "linear_head"]


def linear_head(in_features: int, num_classes: int, dropout: float) -> nn.Sequential:
    # Always Sequential(Dropout, Linear) so state_dict keys do not depend on `dropout`.
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, num_classes))


def _sep_conv(c_in: int, c_out: int) -> nn.Sequential:
    """Keras' SeparableConv2D: a depthwise 3×3 then a pointwise 1×1, then ReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in, bias=False),
                         nn.Conv2d(c_in, c_out, 1), nn.ReLU(inplace=True))


def _dense(c_in: int, c_out: int, p: float) -> list[nn.Module]:
    return [nn.Linear(c_in, c_out), nn.ReLU(inplace=True), nn.BatchNorm1d(c_out), nn.Dropout(p)]


class SimpleCNN(nn.Module):
    """The study's Keras CNN: separable-conv blocks 16→32→64→128→256 (BN + max-pool), then
    dense 512/128/64 with BN and dropout 0.7/0.5/0.3. A global average pool replaces Keras'
    Flatten so any input size ≥ 32 px works."""

    def __init__(self, num_classes: int = 1, in_chans: int = 1, last_dropout: float = 0.3):
        super().__init__()
        widths = [in_chans, 16, 32, 64, 128, 256]
        self.features = nn.Sequential(*[
            nn.Sequential(_sep_conv(a, b), _sep_conv(b, b), nn.BatchNorm2d(b), nn.MaxPool2d(2))
            for a, b in zip(widths, widths[1:])])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(*_dense(256, 512, 0.7), *_dense(512, 128, 0.5),
                                        *_dense(128, 64, last_dropout), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


class BasicBlock(nn.Module):
    """ResNet's residual block: two 3×3 convs, and a 1×1 projection on the shortcut when the
    shape changes. Learning the residual F(x) = H(x) - x keeps deep nets trainable."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet18Scratch(nn.Module):
    """ResNet-18 written by hand (the study's exercise): a 7×7 stem, four stages of two
    `BasicBlock`s (64, 128, 256, 512 channels), global pool, (dropout,) linear. Parameter
    names follow torchvision's, so its state_dict loads into this model and vice versa."""

    def __init__(self, num_classes: int = 1, in_chans: int = 1, dropout: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(64, 64), BasicBlock(64, 64))
        self.layer2 = nn.Sequential(BasicBlock(64, 128, 2), BasicBlock(128, 128))
        self.layer3 = nn.Sequential(BasicBlock(128, 256, 2), BasicBlock(256, 256))
        self.layer4 = nn.Sequential(BasicBlock(256, 512, 2), BasicBlock(512, 512))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = linear_head(512, num_classes, dropout)
        for m in self.modules():  # He init, as torchvision does for ReLU nets
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))
