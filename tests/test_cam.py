"""Grad-CAM wrapper, token reshape, localisation scores, and a CAM that finds a learned blob."""
from __future__ import annotations

import math
from functools import partial
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import timm
import torch
import torchvision
from torch import nn

from utils.evaluation.cam import (CAM_METHODS, CamExplainer, _methods, cam_sweep, compute_cams,
                                  last_conv_layer, overlay)
from utils.evaluation.localisation import (box_mask, cam_iou, is_flat, localisation_scores,
                                           peak_point, pointing_hit)
from utils.models.zoo import tokens_to_grid
from utils.models.registry import create_model, list_models


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tiny_cnn(num_classes: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))


def _resnet18_1ch(num_classes: int = 1) -> nn.Module:
    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    return model


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.modules())


def _check(cams: np.ndarray, n: int, size: int) -> None:
    assert cams.shape == (n, size, size) and cams.dtype == np.float32
    assert np.isfinite(cams).all() and cams.min() >= 0.0 and cams.max() <= 1.0


# --- hooks and the context manager -------------------------------------------------------

def test_hooks_are_released_on_exit_and_mode_restored():
    torch.manual_seed(0)
    model = _tiny_cnn().train()
    before = _hook_count(model)
    with CamExplainer(model, target_layer=model[4]) as cam:
        assert _hook_count(model) > before
        cam(torch.rand(2, 1, 32, 32))
    assert _hook_count(model) == before
    assert model.training, "the model's train mode must come back after the CAM"
    assert all(p.grad is None for p in model.parameters())


def test_hooks_are_released_when_the_block_raises_and_errors_propagate():
    model = _tiny_cnn()
    before = _hook_count(model)
    # an IndexError, which pytorch-grad-cam's own __exit__ would swallow
    with pytest.raises(IndexError):
        with CamExplainer(model, target_layer=model[4]):
            raise IndexError("boom")
    assert _hook_count(model) == before


def test_use_outside_with_block_and_unknown_method_are_clear_errors():
    model = _tiny_cnn()
    cam = CamExplainer(model, target_layer=model[4])
    assert _hook_count(model) == 0  # no hooks before __enter__
    with pytest.raises(RuntimeError, match="with"):
        cam(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="method"):
        CamExplainer(model, method="nope", target_layer=model[4])
    with pytest.raises(ValueError, match="target_layer"):
        CamExplainer(model)  # no .info and no layer given
    assert set(CAM_METHODS) == set(_methods())


# --- shapes and ranges for CNN, ViT, Mixer -----------------------------------------------

def test_cnn_cams_shape_range_and_no_grad_context():
    torch.manual_seed(0)
    model = _resnet18_1ch()
    with torch.no_grad():  # notebooks often sit in no_grad; the CAM must still work
        cams = compute_cams(model, torch.rand(3, 1, 64, 64), target_layer=model.layer4)
    _check(cams, 3, 64)
    single = compute_cams(model, torch.rand(1, 64, 64), target_layer=last_conv_layer(model))
    _check(single, 1, 64)
    assert compute_cams(model, torch.rand(0, 1, 64, 64), target_layer=model.layer4).shape \
        == (0, 64, 64)
    model.requires_grad_(False)  # trainable_from="head" leaves a frozen backbone
    frozen = compute_cams(model, torch.rand(2, 1, 64, 64), target_layer=model.layer4)
    _check(frozen, 2, 64)
    assert frozen.max() > 0, "a frozen backbone must still give gradients at the layer"


@pytest.mark.parametrize("name,prefix", [("vit_tiny_patch16_224", 1), ("mixer_s16_224", 0)])
def test_transformer_cams_with_token_reshape(name, prefix):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, img_size=64, in_chans=1, num_classes=1)
    # as the registry does: the layer and the reshape travel on model.info
    model.info = SimpleNamespace(cam_layer=lambda m: m.blocks[-1].norm1,
                                 cam_reshape=partial(tokens_to_grid, num_prefix_tokens=prefix))
    x = torch.rand(2, 1, 64, 64)
    for method in ("gradcam", "eigencam"):
        _check(compute_cams(model, x, method=method), 2, 64)
    assert compute_cams(model, x, method="eigencam").max() > 0  # not a blank map


def test_tokens_to_grid_drops_prefix_and_keeps_row_major_order():
    side, channels = 4, 3
    patches = torch.arange(side * side, dtype=torch.float32)[None, :, None].repeat(2, 1, channels)
    tokens = torch.cat([torch.full((2, 1, channels), -1.0), patches], dim=1)  # class token
    grid = tokens_to_grid(tokens, num_prefix_tokens=1)
    assert grid.shape == (2, channels, side, side)
    assert grid[1, 2, 2, 3] == 2 * side + 3 and (grid >= 0).all()
    with pytest.raises(ValueError, match="square"):
        tokens_to_grid(torch.zeros(1, 1 + 12, 8), 1)


def test_registry_token_reshapes_drop_vits_class_token_and_keep_all_mixer_tokens():
    from utils.models.registry import model_info

    patches = torch.arange(16, dtype=torch.float32)[None, :, None].repeat(1, 1, 2)
    with_cls = torch.cat([torch.full((1, 1, 2), -1.0), patches], dim=1)
    vit = model_info("vit_tiny").cam_reshape(with_cls)
    mixer = model_info("mixer_tiny").cam_reshape(patches)
    assert vit.shape == mixer.shape == (1, 2, 4, 4)
    torch.testing.assert_close(vit, mixer)  # the class token is gone, the grid row-major
    assert mixer[0, 0, 1, 2] == 6


def test_multilabel_target_index_and_bounds():
    torch.manual_seed(0)
    model = _resnet18_1ch(num_classes=3)
    x = torch.rand(3, 1, 64, 64)
    with CamExplainer(model, target_layer=model.layer4) as cam:
        per_class = [cam(x[:1], target_index=k)[0] for k in range(3)]
        per_image = cam(x, target_index=[0, 1, 2])
        with pytest.raises(ValueError, match="3 output logit"):
            cam(x, target_index=3)
    assert not np.allclose(per_class[0], per_class[1])
    np.testing.assert_allclose(per_image[0], per_class[0], atol=1e-5)


class _OutOfPlaceDenseNet(nn.Module):
    """torchvision's DenseNet forward with an out-of-place final ReLU (the reference)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = nn.functional.relu(self.net.features(x))  # not inplace=True
        pooled = nn.functional.adaptive_avg_pool2d(features, 1).flatten(1)
        return self.net.classifier(pooled)


@pytest.mark.parametrize("name", ["densenet121"])
def test_densenet_cam_on_cpu_equals_the_out_of_place_forward(name):
    """On CPU pytorch-grad-cam's stored activation shares memory with the layer's output;
    with norm5 as the CAM layer, torchvision's in-place ReLU overwrote it (on CUDA it is a
    copy), so the same weights gave another CAM per device."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=1, image_size=128).eval()
    x = torch.rand(2, 1, 128, 128)  # 4×4 maps: at 64 px (2×2) the min-max scaling hid it
    layer = model.info.cam_layer(model)
    ours = compute_cams(model, x)
    reference = compute_cams(_OutOfPlaceDenseNet(model).eval(), x, target_layer=layer)
    assert ours.max() > 0
    np.testing.assert_allclose(ours, reference, atol=1e-5)


# --- localisation scores on hand-made CAMs ------------------------------------------------

def test_pointing_hit_and_iou_known_answers():
    cam = np.zeros((32, 32), np.float32)
    cam[10, 20] = 1.0  # peak at row 10, column 20
    assert pointing_hit(cam, [[15, 5, 10, 10]])            # x 15-25, y 5-15
    assert not pointing_hit(cam, [[0, 0, 10, 10]])
    assert pointing_hit(cam, [[0, 0, 4, 4], [18, 8, 4, 4]])  # any box
    assert not pointing_hit(np.zeros((32, 32)), [[0, 0, 32, 32]])  # flat CAM points nowhere

    # an upsampled 2×2 map: its peak cell is a flat corner square; the peak is its middle
    coarse = cv2.resize(np.array([[1.0, 0.2], [0.3, 0.1]], np.float32), (32, 32))
    assert coarse[0, 0] == coarse[5, 5] == coarse.max()     # a plateau, not one pixel
    assert peak_point(coarse) == (3, 3)                      # rows/cols 0-7 tie: middle ~3.5
    assert pointing_hit(coarse, [[2, 2, 4, 4]]) and not pointing_hit(coarse, [[0, 0, 2, 2]])

    square = np.zeros((32, 32))
    square[0:10, 0:10] = 1.0
    assert cam_iou(square, [[0, 0, 10, 10]]) == pytest.approx(1.0)
    assert cam_iou(square, [[5, 0, 10, 10]]) == pytest.approx(50 / 150)
    assert cam_iou(square, [[20, 20, 5, 5]]) == 0.0
    graded = square * 0.4
    graded[0:5, 0:5] = 1.0  # threshold 0.5 keeps only the 5×5 core
    assert cam_iou(graded, [[0, 0, 10, 10]], threshold=0.5) == pytest.approx(25 / 100)
    assert cam_iou(graded, [[0, 0, 10, 10]], threshold=0.3) == pytest.approx(1.0)


def test_box_mask_uses_pixel_centres():
    mask = box_mask((8, 8), [[1.0, 2.0, 3.0, 2.0]])
    assert mask.sum() == 6 and mask[2:4, 1:4].all()
    assert box_mask((8, 8), [[1.6, 0, 0.8, 1.0]]).sum() == 0  # covers no pixel centre
    assert box_mask((8, 8), torch.tensor([[0.0, 0.0, 8.0, 8.0]])).all()


def test_localisation_scores_aggregates_boxed_images_and_baseline():
    hit = np.zeros((20, 20))
    hit[2, 2] = 1
    miss = np.zeros((20, 20))
    miss[15, 15] = 1
    cams = np.stack([hit, miss, hit])
    boxes = [[[0, 0, 10, 10]], torch.tensor([[0.0, 0.0, 10.0, 5.0]]), []]  # last: no box
    scores = localisation_scores(cams, boxes)
    assert scores["n"] == 2 and scores["hit_rate"] == 0.5
    assert scores["random_hit_rate"] == pytest.approx((100 / 400 + 50 / 400) / 2)
    assert scores["mean_iou"] == pytest.approx((1 / 100 + 0) / 2)
    empty = localisation_scores(cams[:1], [[]])
    assert empty["n"] == 0 and math.isnan(empty["hit_rate"])
    with pytest.raises(ValueError, match="box lists"):
        localisation_scores(cams, boxes[:2])


def test_overlay_rgb_uint8_and_heat_where_the_cam_is():
    image = np.full((40, 40), 100, np.uint8)
    cam = np.zeros((10, 10), np.float32)
    cam[:5, :5] = 1.0  # resized to 40×40: the top-left quarter is hot
    out = overlay(image, cam, alpha=0.5)
    assert out.shape == (40, 40, 3) and out.dtype == np.uint8
    hot, cold = out[5, 5].astype(int), out[35, 35].astype(int)
    assert hot[0] > hot[2] and cold[2] > cold[0]  # jet: red where hot, blue where cold
    gray = overlay(np.linspace(0, 1, 1600).reshape(40, 40), np.zeros((40, 40)), alpha=0.0)
    assert (gray[..., 0] == gray[..., 2]).all()  # alpha 0: the grayscale image only
    with pytest.raises(ValueError, match="colormap"):
        overlay(image, cam, colormap="nope")


# --- THE localisation check: Grad-CAM finds what the network learned ----------------------

def _blob_images(n: int, rng: np.random.Generator, size: int = 64, r: int = 5):
    """Noise; class 1 adds one bright Gaussian blob at a random place (box = ±r)."""
    x = rng.normal(0.3, 0.1, (n, size, size)).astype(np.float32)
    y = np.arange(n) % 2
    yy, xx = np.mgrid[:size, :size]
    boxes = []
    for i in range(n):
        if y[i]:
            cx, cy = rng.uniform(r + 2, size - r - 2, 2)
            x[i] += 0.6 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (r / 2) ** 2))
        boxes.append([[cx - r, cy - r, 2 * r, 2 * r]] if y[i] else [])
    return torch.from_numpy(x[:, None]), torch.from_numpy(y).float(), boxes


def test_gradcam_points_at_the_learned_blob():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x_train, y_train, _ = _blob_images(256, rng)
    x_test, y_test, boxes = _blob_images(64, rng)
    model = _tiny_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(10):  # a few seconds on CPU; stops once the task is learned
        for idx in torch.randperm(len(x_train)).split(32):
            loss = nn.functional.binary_cross_entropy_with_logits(
                model(x_train[idx])[:, 0], y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if loss.item() < 0.05:
            break
    with torch.no_grad():
        accuracy = ((model(x_test)[:, 0] > 0).float() == y_test).float().mean().item()
    assert accuracy >= 0.9, f"the tiny CNN did not learn the blob task (accuracy {accuracy})"

    pos = np.flatnonzero(y_test.numpy() == 1)
    pos_boxes = [boxes[i] for i in pos]
    layer = model[5]  # the last ReLU: Grad-CAM++ weights assume non-negative activations
    for method in ("gradcam", "gradcam++"):
        with CamExplainer(model, method=method, target_layer=layer) as cam:
            scores = localisation_scores(cam(x_test[pos]), pos_boxes)
        assert scores["n"] == len(pos)
        assert scores["hit_rate"] >= 0.5, (method, scores)
        assert scores["hit_rate"] >= 2 * scores["random_hit_rate"], (method, scores)
        assert scores["mean_iou"] > 0.1, (method, scores)
    # Grad-CAM of the negated logit explains "normal": it must not point at the blob
    negative = localisation_scores(compute_cams(model, x_test[pos], positive=False,
                                                target_layer=layer), pos_boxes)
    assert negative["hit_rate"] <= 0.25, negative


# --- every registry model ------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_cam_for_every_registry_model(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=1, pretrained=False, image_size=64)
    before = _hook_count(model)
    _check(compute_cams(model, torch.rand(1, 1, 64, 64)), 1, 64)  # layer/reshape from .info
    assert _hook_count(model) == before


def test_every_cam_method_has_a_label_for_titles():
    from utils.evaluation.cam import CAM_LABELS, CAM_METHODS, _methods

    assert set(CAM_LABELS) == set(CAM_METHODS) == set(_methods())


@pytest.mark.parametrize("name", ["resnet18", "vit_mini"])
def test_cam_sweep_equals_one_explainer_per_layer_and_method(name):
    """One pass for every (layer, method) pair gives the maps CamExplainer gives one by one,
    and leaves no hook behind and the model's mode as it was."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=1, pretrained=False, image_size=64)
    model.train()
    info = model.info
    layers = ({"layer2": model.layer2[-1], "layer3": model.layer3[-1],
               "default": info.cam_layer(model)} if name == "resnet18"
              else {"default": info.cam_layer(model)})
    methods = ("gradcam", "hirescam", "layercam", "gradcam++")
    images, hooks = torch.rand(5, 1, 64, 64), _hook_count(model)
    maps = cam_sweep(model, layers, methods, images, reshape=info.cam_reshape, batch_size=2)
    assert set(maps) == {(n, m) for n in layers for m in methods}
    assert model.training and _hook_count(model) == hooks
    for (layer, method), got in maps.items():
        with CamExplainer(model, method=method, target_layer=layers[layer],
                          reshape=info.cam_reshape) as cam:
            want = cam(images, batch_size=2)
        _check(got, 5, 64)
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"{layer} {method}")
    with pytest.raises(ValueError, match="gradient methods"):
        cam_sweep(model, layers, ("scorecam",), images)


# --- CAMs from a healthy reference ----------------------------------------------------------

def test_a_reference_cam_weighs_activations_minus_the_reference():
    """Zero reference = the plain method; the image's own activation as reference = a flat
    map (nothing differs)."""
    from utils.evaluation.cam import REFERENCE_METHODS, reference_activations

    torch.manual_seed(0)
    model = _resnet18_1ch()
    layers = {"layer2": model.layer2}
    images = torch.rand(3, 1, 64, 64)
    own = reference_activations(model, layers, images[:1])["layer2"]
    assert own.shape == (1, 128, 8, 8)
    for method, plain in zip(REFERENCE_METHODS, ("gradcam", "hirescam")):
        want = compute_cams(model, images, method=plain, target_layer=model.layer2)
        got = compute_cams(model, images, method=method, target_layer=model.layer2,
                           reference=np.zeros_like(own))
        np.testing.assert_allclose(got, want, atol=1e-6)
        same = compute_cams(model, images[:1], method=method, target_layer=model.layer2,
                            reference=own)
        assert is_flat(same[0]), method


def test_reference_methods_need_a_reference_and_the_others_refuse_one():
    model = _tiny_cnn()
    with pytest.raises(ValueError, match="reference"):
        CamExplainer(model, method="gradcam-ref", target_layer=model[4])
    with pytest.raises(ValueError, match="reference"):
        CamExplainer(model, method="gradcam", target_layer=model[4], reference=np.zeros(1))
    with pytest.raises(ValueError, match="references"):
        cam_sweep(model, {"x": model[4]}, ("gradcam-ref",), torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="at least one"):
        from utils.evaluation.cam import reference_activations
        reference_activations(model, {"x": model[4]}, torch.rand(0, 1, 32, 32))


@pytest.mark.parametrize("name", ["resnet18", "vit_mini"])
def test_cam_sweep_with_references_equals_one_explainer_each(name):
    """Also with the layers given out of forward order (layer3 before layer1)."""
    from utils.evaluation.cam import reference_activations

    torch.manual_seed(0)
    model = create_model(name, num_classes=1, pretrained=False, image_size=64).eval()
    info = model.info
    layers = ({"layer3": model.layer3[-1], "layer1": model.layer1[-1]} if name == "resnet18"
              else {"default": info.cam_layer(model)})
    normals, images = torch.rand(4, 1, 64, 64), torch.rand(3, 1, 64, 64)
    refs = reference_activations(model, layers, normals, reshape=info.cam_reshape, batch_size=3)
    maps = cam_sweep(model, layers, ("gradcam-ref", "hirescam-ref", "gradcam"), images,
                     reshape=info.cam_reshape, references=refs, batch_size=2)
    for (layer, method), got in maps.items():
        reference = refs[layer] if method.endswith("-ref") else None
        want = compute_cams(model, images, method=method, target_layer=layers[layer],
                            reshape=info.cam_reshape, reference=reference)
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"{layer} {method}")


def test_what_every_film_has_cancels_against_the_reference():
    """A model whose logit is the mean brightness: plain Grad-CAM peaks on the bright stripe
    every film has (the demo CNNs' mediastinum); from the normals' mean it peaks on the
    lesion, the only thing that differs from a healthy film."""
    from utils.evaluation.cam import reference_activations

    conv = torch.nn.Conv2d(1, 1, 1)
    torch.nn.init.ones_(conv.weight), torch.nn.init.zeros_(conv.bias)
    model = torch.nn.Sequential(conv, torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(1, 1))
    normal = torch.zeros(1, 1, 32, 32)
    normal[..., :, 14:18] = 1.0                       # the stripe every film has
    sick = normal.clone()
    sick[..., 6:10, 24:28] = 0.6                      # a fainter lesion
    box = [[24, 6, 4, 4]]
    plain = compute_cams(model, sick, target_layer=model[1])
    ref = reference_activations(model, {"relu": model[1]}, normal.repeat(3, 1, 1, 1))["relu"]
    cams = compute_cams(model, sick, method="gradcam-ref", target_layer=model[1], reference=ref)
    assert not pointing_hit(plain[0], box) and pointing_hit(cams[0], box)
