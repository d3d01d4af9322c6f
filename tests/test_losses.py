"""Losses on logits: focal reduces to BCE, pos_weight matches torch, easy examples count less."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from utils import make_config
from utils.training.losses import FocalLoss, build_loss, pos_weight_from_labels


def _batch(k: int = 1, n: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * 3, (torch.rand(n, k, generator=g) < 0.3).float()


@pytest.mark.parametrize("k", [1, 14])
def test_focal_without_focusing_is_bce(k):
    logits, targets = _batch(k)
    focal = FocalLoss(alpha=None, gamma=0.0)(logits, targets)
    torch.testing.assert_close(focal, nn.BCEWithLogitsLoss()(logits, targets), atol=1e-6, rtol=0)


def test_focal_pos_weight_matches_bce_pos_weight():
    logits, targets = _batch(3)
    weight = torch.tensor([1.0, 4.0, 0.5])
    ours = FocalLoss(alpha=None, gamma=0.0, pos_weight=weight)(logits, targets)
    torch.testing.assert_close(ours, nn.BCEWithLogitsLoss(pos_weight=weight)(logits, targets),
                               atol=1e-6, rtol=0)


def test_focal_matches_torchvision():
    logits, targets = _batch(14)
    ours = FocalLoss(alpha=0.25, gamma=2.0, reduction="sum")(logits, targets)
    torch.testing.assert_close(ours, sigmoid_focal_loss(logits, targets, 0.25, 2.0, "sum"))


def test_focal_down_weights_easy_examples():
    logits = torch.tensor([[4.0], [0.2]])    # both positives: one easy (p≈0.98), one hard
    targets = torch.ones(2, 1)
    bce = nn.BCEWithLogitsLoss(reduction="none")(logits, targets)
    focal = FocalLoss(alpha=None, gamma=2.0, reduction="none")(logits, targets)
    ratio = (focal / bce).flatten()
    assert ratio[0] < 0.001 and ratio[1] > 0.2   # easy: ×(1-p)^2 ≈ 3e-4; hard ≈ 0.2
    assert (focal <= bce).all()


@pytest.mark.parametrize("reduction,shape", [("mean", ()), ("sum", ()), ("none", (8, 14))])
def test_multilabel_shapes_and_gradient(reduction, shape):
    logits, targets = _batch(14, n=8)
    logits.requires_grad_(True)
    loss = FocalLoss(reduction=reduction)(logits, targets)
    assert loss.shape == shape
    loss.sum().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_pos_weight_from_labels_is_neg_over_pos():
    labels = np.array([[1, 0], [0, 0], [0, 1], [0, 1], [0, 0], [0, 0]])
    torch.testing.assert_close(pos_weight_from_labels(labels), torch.tensor([5.0, 2.0]))
    torch.testing.assert_close(pos_weight_from_labels(np.array([0, 0, 1, 0])),
                               torch.tensor([3.0]))
    with pytest.warns(UserWarning, match=r"classes \[1\]"):
        torch.testing.assert_close(pos_weight_from_labels(np.array([[1, 0], [0, 0]])),
                                   torch.tensor([1.0, 1.0]))


def test_build_loss_from_config():
    labels = np.array([0] * 9 + [1])                    # 1:9 like a rare finding
    logits, targets = _batch(1, n=10)
    bce = build_loss(make_config({"loss": "bce"}), labels)
    assert type(bce) is nn.BCEWithLogitsLoss and bce.pos_weight is None
    weighted = build_loss(make_config({"loss": "weighted_bce"}), labels)
    torch.testing.assert_close(weighted.pos_weight, torch.tensor([9.0]))
    fixed = build_loss(make_config({"loss": "weighted_bce", "pos_weight": 2.5}), labels)
    torch.testing.assert_close(fixed.pos_weight, torch.tensor([2.5]))
    assert targets.sum() > 0 and weighted(logits, targets) > bce(logits, targets)
    focal = build_loss(make_config({"loss": "focal", "focal_gamma": 1.0,
                                    "focal_alpha": -1.0}), labels)
    assert isinstance(focal, FocalLoss) and focal.alpha is None and focal.gamma == 1.0
    focal = build_loss(make_config({"loss": "focal"}), np.zeros((4, 14)))
    assert focal.alpha == 0.25 and focal(*_batch(14)).ndim == 0
    cfg = make_config({})
    cfg.loss = "hinge"
    with pytest.raises(ValueError, match="not one of"):
        build_loss(cfg, labels)


def test_focal_alpha_and_the_balanced_sampler_do_not_both_reweight():
    """alpha 0.25 with a balanced sampler weighted the classes twice (the old `final`)."""
    import warnings

    labels = np.array([0, 0, 0, 1])
    with pytest.warns(UserWarning, match="focal_alpha=0.25 re-weights the classes"):
        build_loss(make_config({"loss": "focal", "sampler": "balanced"}), labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for params in ({"focal_alpha": -1.0, "sampler": "balanced"}, {"sampler": "none"}):
            assert isinstance(build_loss(make_config({"loss": "focal", **params}), labels),
                              FocalLoss)
