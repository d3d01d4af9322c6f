"""Does the model use the lesion? A check on the CAMs that needs no CAM (used by 08).

A CAM can point away from a lesion the model relies on: on the demo, ResNet-18 `final`'s
Grad-CAM of layer3 peaks at the image centre for 62 of 64 Kermany test positives, while
replacing each box by the mirrored contralateral lung takes its mean probability from 0.41 to
0.01. So the gallery reports, beside the pointing game, what happens to p when the boxes
are replaced by the mirror image of the other side (the same rows, mirrored columns: healthy
lung on a one-sided lesion), and as a control the same operation on a same-size box that
holds no lesion. A model that uses the lesion loses p on the first and not on the second.
Images whose mirrored box overlaps one of their boxes (bilateral opacities) are left out.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["mirror_boxes", "occlusion_check"]

Box = Sequence[float]  # [x, y, w, h] in pixels of the model's input


def _pixels(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    x, y, w, h = (int(round(float(v))) for v in box)
    x, y = min(max(x, 0), width - 1), min(max(y, 0), height - 1)
    return x, y, max(1, min(w, width - x)), max(1, min(h, height - y))


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def _mirror(box: tuple[int, int, int, int], width: int) -> tuple[int, int, int, int]:
    x, y, w, h = box
    return width - x - w, y, w, h


def mirror_boxes(image: torch.Tensor, boxes: Sequence[Box]) -> torch.Tensor | None:
    """`image` (`C×H×W`) with every box replaced by its mirror across the vertical midline,
    flipped; None when a mirrored box overlaps one of the boxes (nothing healthy to copy)."""
    height, width = image.shape[-2:]
    rects = [_pixels(b, width, height) for b in boxes]
    if not rects or any(_overlaps(_mirror(r, width), s) for r in rects for s in rects):
        return None
    out = image.clone()
    for x, y, w, h in rects:
        mx = width - x - w
        out[..., y:y + h, x:x + w] = image[..., y:y + h, mx:mx + w].flip(-1)
    return out


def _control_box(boxes: list[tuple[int, int, int, int]], width: int, height: int,
                 rng: np.random.Generator) -> tuple[int, int, int, int] | None:
    """A box of the first box's size; it, its mirror and the boxes apart (50 tries)."""
    _, _, w, h = boxes[0]
    for _ in range(50):
        cand = (int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h)
        mirror = _mirror(cand, width)
        if not _overlaps(cand, mirror) and not any(_overlaps(c, b) for c in (cand, mirror)
                                                   for b in boxes):
            return cand
    return None


@torch.no_grad()
def _probs(model: torch.nn.Module, images: torch.Tensor, device: Any) -> np.ndarray:
    was_training = model.training
    model.eval()
    try:
        return torch.sigmoid(model(images.to(device))[:, 0]).float().cpu().numpy()
    finally:
        model.train(was_training)


def occlusion_check(model: torch.nn.Module, images: torch.Tensor,
                    boxes_list: Sequence[Sequence[Box]], device: Any = None,
                    seed: int = 0) -> dict[str, Any]:
    """p of the positive class before and after mirroring each image's boxes, and after
    mirroring a same-size control box without lesion.

    `device`: where the model runs; None = where its parameters are (a "cpu" default sent
    a GPU model CPU images: a device-mismatch error).

    Returns `occlusion_n` (images used), `p_before`, `p_mirrored`, `drop_share` (share of
    images whose p fell), and `p_control`, `control_drop_share` for the control box (NaN
    without usable images).
    """
    if device is None:
        device = next(iter(model.parameters()), torch.empty(0)).device
    height, width = images.shape[-2:]
    rng = np.random.default_rng(seed)
    keep, lesion, control = [], [], []
    for i, (image, boxes) in enumerate(zip(images, boxes_list)):
        rects = [_pixels(b, width, height) for b in boxes]
        mirrored = mirror_boxes(image, boxes)
        other = _control_box(rects, width, height, rng) if rects else None
        if mirrored is None or other is None:
            continue
        keep.append(i)
        lesion.append(mirrored)
        control.append(mirror_boxes(image, [other]))
    nan = float("nan")
    if not keep:
        return {"occlusion_n": 0, "p_before": nan, "p_mirrored": nan, "drop_share": nan,
                "p_control": nan, "control_drop_share": nan}
    before = _probs(model, images[keep], device)
    after = _probs(model, torch.stack(lesion), device)
    ctrl = _probs(model, torch.stack(control), device)
    return {"occlusion_n": len(keep), "p_before": float(before.mean()),
            "p_mirrored": float(after.mean()), "drop_share": float((after < before).mean()),
            "p_control": float(ctrl.mean()), "control_drop_share": float((ctrl < before).mean())}
