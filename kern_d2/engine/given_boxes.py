"""Given boxes (and labels) per image file, for PredCls / SGCls on many files: from a JSON file (``tools/predict.py
--boxes-json``) or from the gt of a registered dataset.

JSON format::

    {"a.jpg": {"boxes": [[x1, y1, x2, y2], ...], "labels": ["person", "horse", ...]},
     "photos/b.png": {"boxes": [[10, 20, 200, 300]]}}

Keys are matched against an image's path as given, then its normalised path, then its file name
(:func:`find_given_boxes`). Boxes are XYXY in pixels of the image as displayed (after EXIF orientation);
``labels`` (class names, or 0-based class indices) are optional and used in PredCls only.
"""
import json
import os
from typing import Dict, List, Optional, Tuple

from detectron2.data import DatasetCatalog
from detectron2.structures import BoxMode

from .predictor import check_boxes

__all__ = ["load_given_boxes", "dataset_given_boxes", "find_given_boxes"]


def load_given_boxes(path: str) -> Dict[str, dict]:
    """Read and check a boxes JSON file (format in the module docstring); ValueError naming the file and entry."""
    try:
        with open(path, encoding="utf-8-sig") as f:  # labels may hold any class name: UTF-8, whatever the locale
            spec = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"boxes file {path}: {e}") from e
    if not isinstance(spec, dict):
        raise ValueError(f"boxes file {path}: expected an object keyed by image file name")
    for key, entry in spec.items():
        where = f"boxes file {path}: entry {key!r}"
        if not isinstance(entry, dict) or not isinstance(entry.get("boxes"), list):
            raise ValueError(f"{where} must be an object with a 'boxes' list")
        boxes = check_boxes(entry["boxes"], where)
        labels = entry.get("labels")
        if labels is not None and len(labels) != len(boxes):
            raise ValueError(f"{where}: {len(boxes)} boxes but {len(labels)} labels")
    return spec


def dataset_given_boxes(name: str, num_images: int = 0) -> Tuple[List[str], Dict[str, dict]]:
    """(image files, their gt boxes and labels in the JSON format, keyed by file) of the first ``num_images``
    images (all when <= 0) of the registered dataset ``name``; ValueError when it is not registered or unreadable."""
    if name not in DatasetCatalog.list():
        from kern_d2.config_check import unregistered_dataset_error

        raise unregistered_dataset_error(name, "--dataset")
    try:
        dicts = DatasetCatalog.get(name)
    except (OSError, KeyError, ValueError) as e:  # missing or malformed dataset files
        raise ValueError(f"dataset {name}: {type(e).__name__}: {e}") from e
    if num_images > 0:
        dicts = dicts[:num_images]
    spec = {}
    for record in dicts:
        annotations = record.get("annotations", [])
        spec[record["file_name"]] = {
            "boxes": [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations],
            "labels": [int(a["category_id"]) for a in annotations],
        }
    return [record["file_name"] for record in dicts], spec


def find_given_boxes(spec: Dict[str, dict], path: str) -> Optional[dict]:
    """The entry of ``spec`` for image ``path`` (by path, normalised path, then file name), or None."""
    for key in (path, os.path.normpath(path), os.path.basename(path)):
        if key in spec:
            return spec[key]
    return None
