"""The synthetic chest film behind the demo set: `render_chest` draws one frontal radiograph
and returns the boxes of its signs. It looks like a radiograph only in outline (dark lungs,
bright mediastinum, heart, ribs, a diaphragm); the signs are what the models must learn:
pneumonia = a blurred lumpy opacity in the lateral part of a lung (some faint, Kermany's
"virus" larger and fainter), cardiomegaly = a large heart, effusion = a bright blunted base.
Exposure, mottle, film noise and blur keep it from being trivial. `utils.data.demo` writes
these pictures in the three Kaggle layouts.
"""
from __future__ import annotations

import cv2
import numpy as np

__all__ = ["render_chest", "Box"]

Box = list[float]  # [x, y, w, h] in pixels
_LUNG = {-1: (-0.39, -0.10, 0.29, 0.60), 1: (0.40, -0.10, 0.27, 0.57)}  # u0, v0, a, b


# --- drawing --------------------------------------------------------------------------

class _Frame:
    """Body-centred coordinates (u, v ≈ -1..1 across the chest) on a coarse pixel grid."""

    def __init__(self, rng: np.random.Generator, h: int, w: int):
        self.h, self.w = h, w
        self.cx, self.cy = w * (0.5 + rng.normal(0, 0.01)), h * (0.5 + rng.normal(0, 0.015))
        s = rng.uniform(0.9, 1.04)  # patient size / distance to the plate
        self.sx, self.sy = 0.5 * w * s, 0.5 * h * s
        g = max(1, round(max(h, w) / 128))  # anatomy is smooth: draw coarse, upsample later
        xs, ys = np.arange(0, w, g, dtype=np.float32), np.arange(0, h, g, dtype=np.float32)
        self.u = ((xs + (g - 1) / 2 - self.cx) / self.sx)[None, :]
        self.v = ((ys + (g - 1) / 2 - self.cy) / self.sy)[:, None]

    def ellipse(self, u0: float, v0: float, a: float, b: float, edge: float = 0.05) -> np.ndarray:
        r = np.sqrt(((self.u - u0) / a) ** 2 + ((self.v - v0) / b) ** 2)
        t = np.clip((1.0 - r) / (2 * edge) + 0.5, 0, 1)
        return t * t * (3 - 2 * t)  # smoothstep: a soft edge without exp()

    def blob(self, u0: float, v0: float, su: float, sv: float) -> np.ndarray:
        return np.exp(-0.5 * (((self.u - u0) / su) ** 2 + ((self.v - v0) / sv) ** 2))

    def box(self, u0: float, v0: float, a: float, b: float) -> Box:
        """`[x, y, w, h]` in pixels of the rectangle u0±a, v0±b, clipped to the image."""
        x0, x1 = np.clip([self.cx + (u0 - a) * self.sx, self.cx + (u0 + a) * self.sx], 0, self.w)
        y0, y1 = np.clip([self.cy + (v0 - b) * self.sy, self.cy + (v0 + b) * self.sy], 0, self.h)
        return [round(float(v), 1) for v in (x0, y0, x1 - x0, y1 - y0)]


def render_chest(rng: np.random.Generator, h: int, w: int, *, opacities: int = 0,
                 diffuse: bool = False, heart: float = 1.0,
                 effusion: int = 0) -> tuple[np.ndarray, dict[str, list[Box]]]:
    """Draw one synthetic frontal chest film, uint8 `h×w`, and the boxes of its signs.

    Args:
        rng: the image's own generator (positions, intensities, noise).
        opacities: 0, 1 (random side) or 2 (one per lung) pneumonia opacities.
        diffuse: larger, fainter opacities (Kermany's "virus").
        heart: heart size factor (1 normal, 1.3-1.5 cardiomegaly; boxed above 1.2).
        effusion: 0, or -1/+1 for a bright blunted base in the image-left/right lung.
    Returns:
        the image and `{"opacity": [...], "heart": [...], "effusion": [...]}` boxes,
        each `[x, y, w, h]` in pixels.
    Example:
        >>> img, boxes = render_chest(np.random.default_rng(0), 256, 256, opacities=1)
        >>> img.shape, len(boxes["opacity"])
        ((256, 256), 1)
    """
    f = _Frame(rng, h, w)
    lungs = {side: f.ellipse(*_LUNG[side]) for side in (-1, 1)}
    img = 12 + 100 * f.ellipse(0, 0.25, 1.02, 1.3, 0.03)               # air, then the body
    img -= rng.uniform(55, 85) * (lungs[-1] + lungs[1])              # lungs, more or less aerated
    img += 70 * np.exp(-(f.u / 0.10) ** 2) * f.ellipse(0, 0, 0.3, 1.3)  # mediastinum + spine
    size = heart * rng.uniform(0.88, 1.1)                            # normal hearts vary too
    heart_geo = (0.10, 0.28, 0.23 * size, 0.19 * size)
    img += 45 * f.ellipse(*heart_geo, 0.08)
    phase = (f.v - 0.45 * f.u ** 2 + rng.uniform(0, 0.2)) / 0.2     # ribs arc down laterally
    ribs = np.clip(np.cos(2 * np.pi * phase), 0, 1) ** 3 * (np.abs(f.u) > 0.08)
    img += 16 * ribs * f.ellipse(0, -0.15, 0.85, 0.75, 0.08)
    img += 25 * np.exp(-((f.v + 0.78 - 0.12 * np.abs(f.u)) / 0.03) ** 2) * (np.abs(f.u) < 0.6)
    boxes: dict[str, list[Box]] = {"opacity": [], "heart": [], "effusion": []}
    if heart > 1.2:
        boxes["heart"].append(f.box(*heart_geo))
    sides = [int(rng.choice([-1, 1]))] if opacities == 1 else [-1, 1][:opacities]
    for i, side in enumerate(sides):
        v_range = (-0.45, 0.10) if len(sides) == 1 else (-0.38 + 0.45 * i, -0.22 + 0.45 * i)
        add, box = _opacity(rng, f, side, v_range, diffuse)
        img += add * lungs[side]
        boxes["opacity"].append(box)
    if effusion:
        add, box = _effusion(rng, f, effusion)
        img += add * lungs[effusion]
        boxes["effusion"].append(box)
    img = cv2.resize(img.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    return _finish(rng, img), boxes


def _opacity(rng: np.random.Generator, f: _Frame, side: int, v_range: tuple[float, float],
             diffuse: bool) -> tuple[np.ndarray, Box]:
    """A lumpy blurred consolidation in the lateral lung (its mirror image is lung too).

    Strength and size are set so that every architecture of the study, trained from scratch
    for a few epochs at 64 px on a few hundred images, learns it (demo v4): fainter and
    smaller opacities (demo v3: amplitude 25-80, sigma 0.08-0.14) left the tiny ViT and
    Mixer and the study's CNN near chance (test AUROC 0.57-0.65 on 487 Kermany images)."""
    amp = rng.uniform(28, 70) if diffuse else rng.uniform(40, 100)  # some still faint
    sig = rng.uniform(0.14, 0.21) if diffuse else rng.uniform(0.10, 0.175)
    u0, v0 = side * rng.uniform(0.34, 0.44), rng.uniform(*v_range)
    blob = f.blob(u0, v0, sig, 1.3 * sig)
    for _ in range(2):
        du, dv = rng.normal(0, 0.6 * sig, 2)
        blob += 0.5 * f.blob(u0 + du, v0 + dv, 0.6 * sig, 0.8 * sig)
    return amp * np.clip(blob, 0, 1.3), f.box(u0, v0, 1.6 * sig, 2.1 * sig)  # the visible core


def _effusion(rng: np.random.Generator, f: _Frame, side: int) -> tuple[np.ndarray, Box]:
    """Fluid filling the lung base, its meniscus rising laterally (a blunted angle)."""
    lu, lv, la, lb = _LUNG[side]
    level = lv + lb * rng.uniform(0.45, 0.7)
    line = level - 0.12 * np.clip(side * (f.u - lu) / la, -1, 1)
    fluid = 1 / (1 + np.exp(np.clip(-(f.v - line) / 0.025, -30, 30)))
    top, bottom = level - 0.12, lv + lb
    return rng.uniform(25, 65) * fluid, f.box(lu, (top + bottom) / 2, la, (bottom - top) / 2)


def _finish(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Exposure, low-frequency mottle, film noise and blur: what keeps it from being trivial."""
    h, w = img.shape
    mottle = cv2.resize(rng.normal(0, 1, (6, 6)).astype(np.float32), (w, h),
                        interpolation=cv2.INTER_CUBIC)
    img = (img - 70) * rng.uniform(0.92, 1.08) + 70 + rng.normal(0, 4.5) + 6 * mottle
    img += 3.0 * rng.standard_normal(img.shape, dtype=np.float32)
    img = cv2.GaussianBlur(img, (0, 0), 0.7 * w / 256)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
