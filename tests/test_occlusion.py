"""utils/evaluation/occlusion.py: the lesion check beside the CAMs (08). Known answers on a model whose
output is the mean brightness of one image region, so which occlusion moves p is certain."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from utils.evaluation.occlusion import mirror_boxes, occlusion_check

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _RegionBrightness(nn.Module):
    """logit = 10 × (mean brightness of rows 8-15, cols 4-11) − 5: a 'lesion detector'."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (10 * x[:, :, 8:16, 4:12].mean(dim=(1, 2, 3)) - 5)[:, None]


def _lesion_images(n: int = 4) -> tuple[torch.Tensor, list]:
    images = torch.zeros(n, 1, 32, 32)
    images[:, :, 8:16, 4:12] = 1.0          # the lesion, left lung; the mirror side is dark
    return images, [[[4, 8, 8, 8]]] * n


def test_mirroring_copies_the_other_side_and_refuses_bilateral_boxes():
    image = torch.arange(32 * 32, dtype=torch.float32).reshape(1, 32, 32)
    out = mirror_boxes(image, [[4, 8, 8, 8]])
    assert torch.equal(out[0, 8:16, 4:12], image[0, 8:16, 20:28].flip(-1))
    assert torch.equal(out[0, :8], image[0, :8])
    assert torch.equal(out[0, 8:16, 12:], image[0, 8:16, 12:])
    assert mirror_boxes(image, [[4, 8, 8, 8], [20, 10, 8, 8]]) is None  # both lungs
    assert mirror_boxes(image, [[12, 8, 8, 8]]) is None                # on the midline


def test_a_model_that_uses_the_lesion_loses_p_only_when_the_lesion_goes():
    images, boxes = _lesion_images()
    out = occlusion_check(_RegionBrightness(), images, boxes)
    assert out["occlusion_n"] == 4 and out["p_before"] == pytest.approx(1 / (1 + math.exp(-5)))
    assert out["p_mirrored"] == pytest.approx(1 / (1 + math.exp(5))) and out["drop_share"] == 1.0
    assert out["p_control"] == pytest.approx(out["p_before"]) and out["control_drop_share"] == 0.0


def test_a_model_that_ignores_the_lesion_keeps_p():
    images, _ = _lesion_images()
    out = occlusion_check(_RegionBrightness(), images, [[[20, 20, 6, 6]]] * 4)  # wrong boxes
    assert out["drop_share"] == 0.0 and out["p_mirrored"] == pytest.approx(out["p_before"])


def test_no_usable_image_gives_nan_and_the_model_keeps_its_mode():
    model = _RegionBrightness().train()
    images, _ = _lesion_images(2)
    out = occlusion_check(model, images, [[[12, 8, 8, 8]]] * 2)  # on the midline: no mirror
    assert out["occlusion_n"] == 0 and np.isnan(out["p_before"]) and model.training
