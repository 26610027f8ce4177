"""Read users' image files robustly: any mode Pillow opens becomes RGB uint8, EXIF orientation is applied (as
Detectron2's ``read_image`` does), big JPEGs are decoded at reduced resolution, and every failure is one
:class:`ImageReadError` whose message says what went wrong with which file.
"""
import glob
import os
import warnings
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
from PIL import Image, ImageOps

__all__ = ["ImageReadError", "LoadedImage", "read_image", "collect_image_files", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")

_EXIF_ORIENTATION = 0x0112
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # orientations that swap width and height
_REDUCIBLE_MODES = ("L", "LA", "RGB", "RGBA", "CMYK")


class ImageReadError(Exception):
    """An image file that cannot be used; ``str()`` names the file and the reason."""


@dataclass
class LoadedImage:
    """``rgb``: HxWx3 uint8, possibly reduced; ``height``/``width``: the full size of the (EXIF-oriented) image,
    the frame in which boxes of this image are given and returned."""

    rgb: np.ndarray
    height: int
    width: int


def _to_rgb(im: Image.Image) -> np.ndarray:
    """Any Pillow mode -> HxWx3 uint8. Transparent pixels are composited over white, as viewers show them."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(im, dtype=np.float64)
        peak = values.max() if values.size else 0
        if im.mode == "F" and peak <= 1.0:
            values = values * 255.0
        elif peak > 255:
            values = values / 257.0  # 16-bit range onto 8 bits
        gray = np.clip(np.round(values), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im)
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def read_image(path: str, max_side: Optional[int] = None) -> LoadedImage:
    """Read ``path`` as RGB uint8.

    Args:
        max_side: when given, the returned pixels have a longer side of at most ``max_side`` (JPEGs are decoded
            at a reduced scale, other formats are resized after decoding); ``height``/``width`` stay the full size.
    Raises:
        ImageReadError: missing, empty, undecodable, truncated or zero-size image, or beyond Pillow's pixel limit.
    """
    if not os.path.isfile(path):
        raise ImageReadError(f"{path}: not a file")
    if os.path.getsize(path) == 0:
        raise ImageReadError(f"{path}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Large photos are expected here and are reduced below; Pillow still refuses true decompression bombs.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
                if width == 0 or height == 0:
                    raise ImageReadError(f"{path}: zero-size image ({width}x{height})")
                orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
                if orientation in _TRANSPOSING_ORIENTATIONS:
                    width, height = height, width
                if max_side is not None and max(width, height) > max_side and im.format == "JPEG":
                    # Decodes at 1/2, 1/4 or 1/8 scale while staying at least max_side long.
                    scale = max_side / max(width, height)
                    im.draft(None, (max(1, int(np.ceil(im.size[0] * scale))), max(1, int(np.ceil(im.size[1] * scale)))))
                im.load()
                if max_side is not None and max(im.size) >= 2 * max_side and im.mode in _REDUCIBLE_MODES:
                    # Shrink by an integer factor before any full-size copy (mode conversion, numpy), which
                    # for a 10,000 px PNG would cost gigabytes; the exact size comes from the resize below.
                    im = im.reduce(max(im.size) // max_side)
                im = ImageOps.exif_transpose(im)
                rgb = _to_rgb(im)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"{path}: too many pixels for Pillow's safety limit ({e})") from e
    except Exception as e:  # noqa: BLE001 -- any decoder failure means "unreadable", reported with its reason
        raise ImageReadError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from e
    if max_side is not None and max(rgb.shape[:2]) > max_side:
        scale = max_side / max(rgb.shape[:2])
        size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    return LoadedImage(rgb=np.ascontiguousarray(rgb), height=height, width=width)


def collect_image_files(inputs: Sequence[str]) -> Tuple[List[str], List[str]]:
    """Expand folders (their image files by extension, not recursive, hidden files left out) and globs. Returns
    (files, in order without repeats; folder entries that are not image files by extension, which are left out).
    A path or pattern that matches nothing is a FileNotFoundError."""
    files, ignored, seen = [], [], set()

    def add(path: str):
        key = os.path.abspath(path)
        if key not in seen:
            seen.add(key)
            files.append(path)

    for item in inputs:
        if os.path.isdir(item):
            for name in sorted(os.listdir(item)):
                path = os.path.join(item, name)
                if name.startswith(".") or not os.path.isfile(path):
                    continue
                if name.lower().endswith(IMAGE_EXTENSIONS):
                    add(path)
                else:
                    ignored.append(path)
        elif os.path.exists(item):
            add(item)
        else:
            matches = sorted(glob.glob(item))
            if not matches:
                raise FileNotFoundError(f"{item}: no such file or folder, and no file matches it as a glob")
            for path in matches:
                if os.path.isfile(path):
                    add(path)
    return files, ignored
