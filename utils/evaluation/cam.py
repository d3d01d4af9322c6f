"""Grad-CAM (pytorch-grad-cam) and how well a CAM points at the annotated boxes.

The CAM machinery is pytorch-grad-cam's; this module adds what the notebooks need around it:
hooks that are always released (`with CamExplainer(model) as cam:`), targets for a single
pneumonia logit (positive or negated) and for the 14 NIH logits, the ViT/Mixer token
reshape, a healthy reference for Grad-CAM and HiResCAM (`gradcam-ref`, `hirescam-ref`), and
a localisation score with its honest baseline (the hit rate of a random point).

Boxes are `[x, y, w, h]` in the CAM's pixel grid (the transformed image the model saw). A
pixel belongs to a box when its centre does, the same rule for pointing, IoU and baseline.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["CamExplainer", "CAM_METHODS", "CAM_LABELS", "REFERENCE_METHODS", "compute_cams",
           "cam_sweep", "reference_activations", "overlay",
           "last_conv_layer"]


class _FromReference:
    """A pytorch-grad-cam method whose activations are measured from a healthy reference.

    Grad-CAM weighs a layer's activations `A` by the pneumonia logit's gradients; what every
    film has (mediastinum, spine, the bright body) fires many channels in every image, so on
    the demo's small CNNs the map of a positive film peaked there, not on its lesion. With
    `references[layer]` = `R`, the mean activation of the validation normals
    (`reference_activations`), the map weighs `A - R` instead: where this film's features
    exceed a healthy film's, as DeepLIFT measures from a reference input. Zero reference =
    the plain method. This subclass hook is the only CAM arithmetic the project writes.
    """

    references: dict[nn.Module, np.ndarray]

    def get_cam_image(self, input_tensor, target_layer, targets, activations, grads,
                      eigen_smooth=False):
        reference = self.references.get(target_layer)
        if reference is None:
            raise ValueError("a -ref CAM method needs `reference=` (CamExplainer) or "
                             "`references=` (cam_sweep) for its layer: "
                             "utils.evaluation.cam.reference_activations(model, layers, normals)")
        return super().get_cam_image(input_tensor, target_layer, targets,
                                     activations - reference, grads, eigen_smooth)


def _methods() -> dict[str, type]:
    import pytorch_grad_cam as pgc

    return {"gradcam": pgc.GradCAM, "gradcam++": pgc.GradCAMPlusPlus, "hirescam": pgc.HiResCAM,
            "xgradcam": pgc.XGradCAM, "layercam": pgc.LayerCAM, "eigencam": pgc.EigenCAM,
            "eigengradcam": pgc.EigenGradCAM, "scorecam": pgc.ScoreCAM,
            "gradcam-ref": type("GradCAMFromReference", (_FromReference, pgc.GradCAM), {}),
            "hirescam-ref": type("HiResCAMFromReference", (_FromReference, pgc.HiResCAM), {})}


CAM_METHODS: tuple[str, ...] = ("gradcam", "gradcam++", "hirescam", "xgradcam", "layercam",
                                "eigencam", "eigengradcam", "scorecam", "gradcam-ref",
                                "hirescam-ref")
REFERENCE_METHODS: tuple[str, ...] = ("gradcam-ref", "hirescam-ref")  # need a reference
CAM_LABELS = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "hirescam": "HiResCAM",
              "xgradcam": "XGrad-CAM", "layercam": "LayerCAM", "eigencam": "EigenCAM",
              "eigengradcam": "EigenGrad-CAM", "scorecam": "Score-CAM",
              "gradcam-ref": "Grad-CAM from a healthy reference",
              "hirescam-ref": "HiResCAM from a healthy reference"}  # for titles


class _LogitTarget:
    """One logit of one image, negated for a negative-class explanation of a binary logit."""

    def __init__(self, index: int, sign: float) -> None:
        self.index, self.sign = index, sign

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        if self.index >= output.shape[-1] or self.index < 0:
            raise ValueError(f"target_index={self.index} but the model has "
                             f"{output.shape[-1]} output logit(s)")
        return self.sign * output[..., self.index]


def last_conv_layer(model: nn.Module) -> nn.Module:
    """The last `nn.Conv2d` of a CNN: the classic Grad-CAM layer, for models without `.info`."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer; pass target_layer=")
    return convs[-1]


class CamExplainer:
    """Grad-CAM on a model, as a context manager that always removes its hooks.

    The target layer and token reshape come from `model.info` (the registry's `ModelInfo`)
    unless given. Hooks exist only inside the `with` block; on exit the model gets its
    train/eval mode back and its parameter gradients cleared (Grad-CAM's backward fills them).

    Args:
        model: maps `B×1×H×W` to logits `B×K`.
        method: one of `CAM_METHODS` (gradcam, gradcam++, eigencam, ...).
        target_layer: layer to explain; default `model.info.cam_layer(model)`.
        reshape: tokens → `B×C×h×w` for transformers; default `model.info.cam_reshape`.
        reference: the layer's healthy reference activation (`reference_activations`), for
            the `-ref` methods (`REFERENCE_METHODS`).
    Example:
        >>> with CamExplainer(model) as cam:  # doctest: +SKIP
        ...     maps = cam(images)            # N×H×W in [0, 1]
    """

    def __init__(self, model: nn.Module, method: str = "gradcam",
                 target_layer: nn.Module | None = None,
                 reshape: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 reference: np.ndarray | None = None) -> None:
        methods = _methods()
        if method not in methods:
            raise ValueError(f"method={method!r} is not one of {list(methods)}")
        if (method in REFERENCE_METHODS) != (reference is not None):
            raise ValueError(f"method={method!r} with reference="
                             f"{'None' if reference is None else 'an array'}: the -ref methods "
                             "take one (utils.evaluation.cam.reference_activations), the others none")
        info = getattr(model, "info", None)
        if target_layer is None:
            if info is None or getattr(info, "cam_layer", None) is None:
                raise ValueError(f"{type(model).__name__} has no `.info.cam_layer` (registry "
                                 "models do); pass target_layer=, e.g. last_conv_layer(model)")
            target_layer = info.cam_layer(model)
            reshape = reshape if reshape is not None else info.cam_reshape
        self.model, self.method, self.target_layer = model, method, target_layer
        self.reshape, self.reference = reshape, reference
        self._cam_class = methods[method]
        self._cam: Any = None
        self._was_training = model.training

    def __enter__(self) -> "CamExplainer":
        self._was_training = self.model.training
        self._cam = self._cam_class(model=self.model, target_layers=[self.target_layer],
                                    reshape_transform=self.reshape)
        if self.reference is not None:
            self._cam.references = {self.target_layer: np.asarray(self.reference)}
        return self

    def __exit__(self, *exc: object) -> None:
        # Not BaseCAM.__exit__: it swallows IndexError; errors here must reach the user.
        self.close()

    def close(self) -> None:
        """Remove the hooks and restore the model's mode (safe to call twice)."""
        if self._cam is not None:
            self._cam.activations_and_grads.release()
            self._cam = None
            self.model.train(self._was_training)
            self.model.zero_grad(set_to_none=True)

    def __call__(self, images: torch.Tensor | np.ndarray, target_index: int | Sequence[int] = 0,
                 positive: bool = True, batch_size: int = 16) -> np.ndarray:
        """CAMs `N×H×W` float32 in [0, 1] for `images` (`N×1×H×W` or `1×H×W`).

        Args:
            target_index: the logit to explain (0 for binary; a finding index for NIH), or
                one index per image.
            positive: False explains the negative class of a single binary logit (the
                negated logit), e.g. why the model called an image normal.
            batch_size: images per forward/backward pass (memory bound on a GPU).
        """
        if self._cam is None:
            raise RuntimeError("CamExplainer is used outside its `with` block; write "
                               "`with CamExplainer(model) as cam: cam(images)`")
        x = torch.as_tensor(images, dtype=torch.float32)
        x = x.unsqueeze(0) if x.ndim == 3 else x
        if x.ndim != 4:
            raise ValueError(f"images must be N×C×H×W or C×H×W, got shape {tuple(x.shape)}")
        indices = ([int(target_index)] * len(x) if np.isscalar(target_index)
                   else [int(i) for i in target_index])
        if len(indices) != len(x):
            raise ValueError(f"{len(indices)} target indices for {len(x)} images")
        if len(x) == 0:
            return np.zeros((0, *x.shape[-2:]), dtype=np.float32)
        sign = 1.0 if positive else -1.0
        out = []
        with torch.enable_grad():  # callers often sit inside torch.no_grad()
            for start in range(0, len(x), batch_size):
                targets = [_LogitTarget(i, sign) for i in indices[start:start + batch_size]]
                # an input that requires grad: a frozen backbone (trainable_from="head")
                # still gets gradients at the target layer
                batch = x[start:start + batch_size].clone().requires_grad_(True)
                out.append(self._cam(input_tensor=batch, targets=targets))
        return _checked(np.concatenate(out))


def _checked(cams: np.ndarray) -> np.ndarray:
    """float32 CAMs in [0, 1] (only float rounding is clipped); NaN/inf is an error."""
    cams = cams.astype(np.float32)
    if not np.isfinite(cams).all():
        raise FloatingPointError("non-finite CAM values: the model's activations or "
                                 "gradients hold NaN/inf for these images")
    return np.clip(cams, 0.0, 1.0)


def compute_cams(model: nn.Module, images: torch.Tensor | np.ndarray,
                 target_index: int | Sequence[int] = 0, method: str = "gradcam",
                 positive: bool = True, *, target_layer: nn.Module | None = None,
                 reshape: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 batch_size: int = 16, reference: np.ndarray | None = None) -> np.ndarray:
    """CAMs `N×H×W` in [0, 1] in one call (hooks added and removed inside).

    Arguments as in `CamExplainer` and its call.
    Example:
        >>> cams = compute_cams(model, batch_images)  # doctest: +SKIP
    """
    with CamExplainer(model, method=method, target_layer=target_layer, reshape=reshape,
                      reference=reference) as cam:
        return cam(images, target_index=target_index, positive=positive, batch_size=batch_size)


# the methods that differ only in how they weigh one layer's activations and gradients
_GRADIENT_METHODS = ("gradcam", "gradcam++", "hirescam", "xgradcam", "layercam",
                     *REFERENCE_METHODS)


def reference_activations(model: nn.Module, layers: dict[str, nn.Module], images: torch.Tensor,
                          reshape: Callable[[torch.Tensor], torch.Tensor] | None = None,
                          batch_size: int = 64) -> dict[str, np.ndarray]:
    """Each layer's mean activation `1×C×h×w` over `images` (the healthy reference of the
    `-ref` CAM methods: pass the validation normals), through the same hooks and token
    reshape the CAM uses, in eval mode as pytorch-grad-cam runs (the mode is restored)."""
    from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients

    if len(images) == 0:
        raise ValueError("reference_activations needs at least one image (healthy films)")
    names = _forward_order(model, layers, images[:1])  # the order its hooks record in
    hooks = ActivationsAndGradients(model, [layers[n] for n in names], reshape)
    device, sums, was_training = next(model.parameters()).device, [0.0] * len(names), model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                hooks(images[start:start + batch_size].to(device))
                sums = [s + a.double().sum(0, keepdim=True)
                        for s, a in zip(sums, hooks.activations)]
    finally:
        hooks.release()
        model.train(was_training)
    return {n: (s / len(images)).float().numpy() for n, s in zip(names, sums)}


def cam_sweep(model: nn.Module, layers: dict[str, nn.Module], methods: Sequence[str],
              images: torch.Tensor, reshape: Callable[[torch.Tensor], torch.Tensor] | None = None,
              batch_size: int = 16, references: dict[str, np.ndarray] | None = None
              ) -> dict[tuple[str, str], np.ndarray]:
    """CAMs `N×H×W` of the positive logit for every `(layer name, method)` pair, from one
    forward and one backward pass per batch.

    The gradient methods differ only in how they weigh the same activations and gradients,
    so the gallery's choice of 4 layers × 3 methods costs one pass instead of twelve (the
    demo's 08 spent most of its time there). pytorch-grad-cam computes every map: its method
    objects share one set of hooks. Each map equals
    `CamExplainer(model, method, layers[name], reshape)(images)` (tests/test_cam.py); the
    `-ref` methods read `references[name]` (`reference_activations`).
    """
    unknown = [m for m in methods if m not in _GRADIENT_METHODS]
    if unknown:
        raise ValueError(f"cam_sweep takes gradient methods {_GRADIENT_METHODS}, got {unknown}")
    missing = [n for n in layers if n not in (references or {})]
    if missing and any(m in REFERENCE_METHODS for m in methods):
        raise ValueError(f"the -ref methods need references for layers {missing}: "
                         "utils.evaluation.cam.reference_activations(model, layers, normals)")
    # pytorch-grad-cam pairs its layers with the activations in the order the hooks fire
    names, classes, was_training = _forward_order(model, layers, images[:1]), _methods(), \
        model.training
    cams = [classes[m](model=model, target_layers=[layers[n] for n in names],
                       reshape_transform=reshape) for m in methods]
    hooks = cams[0].activations_and_grads
    for cam in cams[1:]:  # one set of hooks: the others read what the first one recorded
        cam.activations_and_grads.release()
        cam.activations_and_grads = hooks
    for cam in cams:
        cam.references = {layers[n]: references[n] for n in names if n in (references or {})}
    out: dict[tuple[str, str], list[np.ndarray]] = {(n, m): [] for n in names for m in methods}
    device = next(model.parameters()).device
    try:
        with torch.enable_grad():
            for start in range(0, len(images), batch_size):
                batch = images[start:start + batch_size].to(device).clone().requires_grad_(True)
                targets = [_LogitTarget(0, 1.0)] * len(batch)
                outputs = hooks(batch)
                model.zero_grad()
                sum(t(o) for t, o in zip(targets, outputs)).backward()  # as BaseCAM.forward
                for method, cam in zip(methods, cams):
                    per_layer = cam.compute_cam_per_layer(batch, targets, False)
                    for name, layer_cam in zip(names, per_layer):  # BaseCAM.forward, per layer
                        out[(name, method)].append(cam.aggregate_multi_layers([layer_cam]))
    finally:
        hooks.release()
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    return {key: _checked(np.concatenate(maps)) for key, maps in out.items()}


def _forward_order(model: nn.Module, layers: dict[str, nn.Module],
                   probe: torch.Tensor) -> list[str]:
    """The names of `layers` in the order their outputs appear in a forward pass (in eval
    mode: the probe must not move BatchNorm's running statistics)."""
    seen: list[str] = []
    hooks = [layer.register_forward_hook(lambda *_, n=name: seen.append(n))
             for name, layer in layers.items()]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(probe.to(next(model.parameters()).device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return list(dict.fromkeys(seen)) + [n for n in layers if n not in seen]


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.4,
            colormap: str = "jet") -> np.ndarray:
    """The CAM as a heat map over a grayscale image: `H×W×3` uint8 RGB.

    Args:
        image: `H×W` uint8, or float (min-max scaled to [0, 1] when outside it).
        cam: `h×w` in [0, 1]; resized to the image when the sizes differ.
        alpha: weight of the heat map (0 = image only).
        colormap: an OpenCV colormap name (jet, turbo, inferno, ...).
    """
    import cv2
    from pytorch_grad_cam.utils.image import show_cam_on_image

    img = np.asarray(image)
    img = img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img
    if img.ndim != 2:
        raise ValueError(f"overlay expects a grayscale H×W image, got shape {img.shape}")
    img = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
    if img.min() < 0 or img.max() > 1:  # normalised tensors: back to [0, 1] for display
        img = (img - img.min()) / max(float(img.max() - img.min()), 1e-8)
    cam = np.asarray(cam, dtype=np.float32)
    if cam.shape != img.shape:
        cam = cv2.resize(cam, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
    code = getattr(cv2, f"COLORMAP_{colormap.upper()}", None)
    if code is None:
        raise ValueError(f"colormap={colormap!r} is not an OpenCV colormap (e.g. 'jet')")
    rgb = np.repeat(img[..., None], 3, axis=2)
    return show_cam_on_image(rgb, np.clip(cam, 0, 1), use_rgb=True, colormap=code,
                             image_weight=1.0 - alpha)
