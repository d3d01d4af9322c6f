"""Albumentations pipelines by name: the study's augmentation versions, and `none` for eval.

Every pipeline takes a uint8 grayscale `H×W` array (and optionally coco `x,y,w,h` boxes with
their labels) and returns `image` as a float tensor `1×S×S` normalised with the model's
mean/std, with the boxes moved along with the pixels, so Grad-CAM can be scored on them.
"""
from __future__ import annotations

from typing import Callable

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

__all__ = ["AUGMENTATIONS", "build_transform"]


def _resize(size: int) -> A.Resize:
    """Area interpolation when shrinking (no aliasing, and identical to the cache's
    cv2.INTER_AREA, so cached and uncached eval tensors match), bilinear when enlarging."""
    return A.Resize(size, size, interpolation=cv2.INTER_LINEAR, area_for_downscale="image")


def _none(size: int) -> list[A.BasicTransform]:
    """Evaluation: only a resize to the model's square input."""
    return [_resize(size)]


# Horizontal flips are debated for chest X-rays: they put the heart on the wrong side
# (situs inversus is rare), so the network may learn laterality cues that real images never
# show. The study flipped anyway and we keep its recipes unchanged to reproduce its numbers.

def _basic(size: int) -> list[A.BasicTransform]:
    """Study v1: resize, horizontal flip, small rotation (±10°) and shift (±10%)."""
    return [_resize(size), A.HorizontalFlip(p=0.5),
            A.Affine(rotate=(-10, 10), translate_percent=(-0.1, 0.1), p=0.5,
                     border_mode=cv2.BORDER_CONSTANT, fill=0)]


def _strong(size: int) -> list[A.BasicTransform]:
    """Study v2: random resized crop (80-100% of the area), flip, rotation ±20°."""
    return [A.RandomResizedCrop(size=(size, size), scale=(0.8, 1.0)), A.HorizontalFlip(p=0.5),
            A.Affine(rotate=(-20, 20), p=0.5, border_mode=cv2.BORDER_CONSTANT, fill=0)]


def _v3(size: int) -> list[A.BasicTransform]:
    """Study v3: resize, brightness/contrast ±20% (its ColorJitter on a gray image),
    rotation ±15°, flip."""
    return [_resize(size),
            A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.0, hue=0.0, p=0.8),
            A.Affine(rotate=(-15, 15), p=0.5, border_mode=cv2.BORDER_CONSTANT, fill=0),
            A.HorizontalFlip(p=0.5)]


AUGMENTATIONS: dict[str, Callable[[int], list[A.BasicTransform]]] = {
    "none": _none, "basic": _basic, "strong": _strong, "v3": _v3}


def build_transform(name: str, image_size: int, mean: float = 0.5, std: float = 0.25, *,
                    boxes: bool = True, min_visibility: float = 0.1,
                    seed: int | None = None) -> A.Compose:
    """The pipeline `name` ending in normalisation and a `1×S×S` float tensor.

    Args:
        name: a key of `AUGMENTATIONS` (`none` for validation/test).
        image_size: output side S in pixels.
        mean, std: the model's single-channel normalisation (`model.info.mean/std`),
            applied to pixels scaled to [0, 1].
        boxes: accept `bboxes=[[x, y, w, h], ...]` (coco, pixels) with `labels=[...]`; boxes
            left less than `min_visibility` visible by a crop are dropped with their labels.
        seed: albumentations keeps its own RNG (global seeds do not reach it): set it for
            reproducible augmentations; re-seed per DataLoader worker with
            `transform.set_random_seed(seed + worker_id)` so workers differ.
    Example:
        >>> t = build_transform("basic", 224, 0.449, 0.226)
        >>> out = t(image=gray_uint8, bboxes=[[10, 20, 50, 40]], labels=[1])  # doctest: +SKIP
        >>> out["image"].shape  # doctest: +SKIP
        torch.Size([1, 224, 224])
    """
    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {name!r}; choose one of {sorted(AUGMENTATIONS)}")
    bbox_params = A.BboxParams(format="coco", label_fields=["labels"],
                               min_visibility=min_visibility, clip=True) if boxes else None
    steps = [*AUGMENTATIONS[name](image_size),
             A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()]
    return A.Compose(steps, bbox_params=bbox_params, seed=seed)
