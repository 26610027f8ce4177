"""Drawing primitives of the generated datasets (toy, synth): filled shapes in a box and a noisy background.

Boxes are XYXY with exclusive right/bottom edges ([x1, x2) x [y1, y2)), as the datasets' annotations.
"""
from typing import Tuple

import cv2
import numpy as np

SHAPES = ("rectangle", "square", "frame", "circle", "ellipse", "triangle", "diamond", "chevron")


def noisy_background(rng: np.random.Generator, width: int, height: int, float32_noise: bool = False) -> np.ndarray:
    """uint8 [height, width, 3]: a muted smooth random gradient plus blurred noise, so that objects must be told
    from clutter. ``float32_noise`` draws the noise in float32 (about twice as fast; another random stream)."""
    base = rng.integers(70, 150, size=3)
    small = rng.normal(0, 18, size=(6, 6, 3)).astype(np.float32)
    smooth = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    if float32_noise:
        raw = rng.standard_normal(size=(height, width, 3), dtype=np.float32) * np.float32(18)
    else:
        raw = rng.normal(0, 18, size=(height, width, 3)).astype(np.float32)
    noise = cv2.GaussianBlur(raw, (3, 3), 0)
    return np.clip(base + smooth + noise, 0, 255).astype(np.uint8)


def jitter_colour(rng: np.random.Generator, colour: Tuple[int, int, int], amount: int = 15) -> Tuple[int, ...]:
    """The BGR ``colour`` with each channel moved by up to +-``amount``."""
    return tuple(int(c) for c in np.clip(np.array(colour) + rng.integers(-amount, amount + 1, size=3), 0, 255))


def draw_shape(pixels: np.ndarray, shape: str, colour: Tuple[int, ...], box) -> None:
    """Draw ``shape`` filling ``box`` (XYXY, exclusive right/bottom) on ``pixels`` (BGR, in place)."""
    x1, y1, x2, y2 = (int(v) for v in box)
    x2, y2 = x2 - 1, y2 - 1  # inclusive pixel coordinates for OpenCV
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    if shape in ("rectangle", "square"):
        cv2.rectangle(pixels, (x1, y1), (x2, y2), colour, thickness=-1)
    elif shape == "frame":
        cv2.rectangle(pixels, (x1 + 1, y1 + 1), (x2 - 1, y2 - 1), colour, thickness=3)
    elif shape == "circle":
        cv2.ellipse(pixels, (cx, cy), ((x2 - x1) // 2, (y2 - y1) // 2), 0, 0, 360, colour, thickness=-1)
    elif shape == "ellipse":
        cv2.ellipse(pixels, (cx, cy), ((x2 - x1) // 2, (y2 - y1) // 2), 0, 0, 360, colour, thickness=-1)
        cv2.circle(pixels, (x2 - (x2 - x1) // 5, cy - (y2 - y1) // 6), 2, (20, 20, 20), thickness=-1)
    elif shape == "triangle":
        cv2.fillPoly(pixels, [np.array([[x1, y2], [x2, y2], [cx, y1]], dtype=np.int32)], colour)
    elif shape == "diamond":
        cv2.fillPoly(pixels, [np.array([[cx, y1], [x2, cy], [cx, y2], [x1, cy]], dtype=np.int32)], colour)
    elif shape == "chevron":
        pts = [[x1, y1], [cx, cy], [x2, y1], [x2, y1 + (y2 - y1) // 2], [cx, y2], [x1, y1 + (y2 - y1) // 2]]
        cv2.fillPoly(pixels, [np.array(pts, dtype=np.int32)], colour)
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")
