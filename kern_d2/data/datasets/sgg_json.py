"""A simple JSON format for custom scene graph datasets.

Schema (one file per split)::

    {
      "categories": ["person", "hat", ...],        # C object class names; category_id = position (0-based)
      "predicates": ["wears", "on", ...],          # P-1 predicate names, WITHOUT "no relation";
                                                   # predicate id = position + 1 (0 is "no relation")
      "images": [
        {"id": 1, "file_name": "a.jpg", "width": 640, "height": 480,   # file_name relative to image_root
         "objects": [{"bbox": [x1, y1, x2, y2], "category": "person"}, ...],   # absolute pixels, XYXY
         "relations": [{"subject": 0, "object": 1, "predicate": "wears"}, ...]} # subject/object: object indices
      ]
    }

Objects and relations name their category / predicate by NAME (a string from the lists above). ``relations``
may be omitted (no relations). Boxes are clipped to the image; boxes without area after clipping are dropped
with their relations (counted and logged), as in the VG loader; a box with x2 < x1 or y2 < y1 is an error (most
likely [x, y, w, h] given by mistake).
"""
import logging
import os
from typing import List, Tuple

import numpy as np

from .arrays import DatasetFormatError, SGGArrays, clean_annotations, keep_images, to_dataset_dicts
from .image_files import check_image_files
from .ragged import read_json_file
from .registration import register_sgg_dataset
from .vg_format import NO_RELATION

logger = logging.getLogger(__name__)

IMAGE_KEYS = ("id", "file_name", "width", "height", "objects")


def _read_json(json_file: str) -> dict:
    data = read_json_file(json_file, "SGG json")
    missing = [k for k in ("categories", "predicates", "images") if not isinstance(data, dict) or k not in data]
    if missing:
        raise DatasetFormatError(f"{json_file}: missing top-level keys {missing}")
    return data


def _name_list(names, json_file: str, key: str) -> List[str]:
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise DatasetFormatError(f"{json_file}: '{key}' must be a non-empty list of names")
    if len(set(names)) != len(names):
        raise DatasetFormatError(f"{json_file}: '{key}' has duplicate names")
    return names


def _classes(data: dict, json_file: str) -> Tuple[List[str], List[str]]:
    thing_classes = _name_list(data["categories"], json_file, "categories")
    predicates = _name_list(data["predicates"], json_file, "predicates")
    if NO_RELATION in predicates:
        raise DatasetFormatError(f"{json_file}: 'predicates' must not list '{NO_RELATION}' (it is added as id 0)")
    return thing_classes, [NO_RELATION] + predicates


def read_sgg_json_classes(json_file: str) -> Tuple[List[str], List[str]]:
    """(thing_classes [C], predicate_classes [P] with "__no_relation__" first) of a SGG json file."""
    return _classes(_read_json(json_file), json_file)


def _box_array(raw_boxes, where: str) -> np.ndarray:
    """[n, 4] float64 from a list of [x1, y1, x2, y2]; error naming the first object that is not 4 finite numbers."""
    boxes = np.zeros((len(raw_boxes), 4))
    for k, box in enumerate(raw_boxes):
        try:
            boxes[k] = np.asarray(box, dtype=np.float64).reshape(4)
        except (TypeError, ValueError):
            boxes[k] = np.nan
        if not np.isfinite(boxes[k]).all():
            raise DatasetFormatError(f"{where}: object {k}: 'bbox' must be 4 finite numbers [x1, y1, x2, y2]")
    return boxes


def _parse_image(image, k, json_file, category_id, predicate_id):
    """(boxes [n,4], classes [n], relations [r,3]) of one image entry, validated."""
    where = f"{json_file}: image #{k}"
    if not isinstance(image, dict) or any(key not in image for key in IMAGE_KEYS):
        raise DatasetFormatError(f"{where}: every image needs keys {list(IMAGE_KEYS)}")
    where = f"{json_file}: image {image['id']!r}"
    if not (isinstance(image["width"], int) and isinstance(image["height"], int)) or min(
        image["width"], image["height"]
    ) <= 0:
        raise DatasetFormatError(f"{where}: width and height must be positive integers")
    objects, relations = image["objects"], image.get("relations", [])
    try:
        raw_boxes = [o["bbox"] for o in objects]
        names = [o["category"] for o in objects]
    except (KeyError, TypeError):
        raise DatasetFormatError(f"{where}: every object needs 'bbox' [x1, y1, x2, y2] and 'category'") from None
    boxes = _box_array(raw_boxes, where)
    inverted = np.flatnonzero((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))
    if inverted.size:
        raise DatasetFormatError(
            f"{where}: object {inverted[0]} bbox {boxes[inverted[0]].tolist()} has x2 < x1 or y2 < y1 "
            f"(boxes are [x1, y1, x2, y2], not [x, y, w, h])"
        )
    unknown = [n for n in names if n not in category_id]
    if unknown:
        raise DatasetFormatError(f"{where}: unknown category {unknown[0]!r} (not in 'categories')")
    try:
        rel = np.array(
            [[r["subject"], r["object"], predicate_id.get(r["predicate"], -1)] for r in relations], dtype=np.int64
        ).reshape(-1, 3)
    except (KeyError, TypeError, ValueError):
        raise DatasetFormatError(
            f"{where}: every relation needs integer 'subject', 'object' and a 'predicate'"
        ) from None
    bad = np.flatnonzero(rel[:, 2] < 0)
    if bad.size:
        raise DatasetFormatError(f"{where}: relation {bad[0]} has unknown predicate {relations[bad[0]]['predicate']!r}")
    bad = np.flatnonzero(((rel[:, :2] < 0) | (rel[:, :2] >= len(objects))).any(axis=1))
    if bad.size:
        raise DatasetFormatError(
            f"{where}: relation {bad[0]} points at objects {rel[bad[0], :2].tolist()} outside its "
            f"{len(objects)} objects"
        )
    return boxes, np.array([category_id[n] for n in names], dtype=np.int64), rel


def load_sgg_json(
    json_file: str,
    image_root: str,
    filter_empty_rels: bool = False,
    filter_non_overlap: bool = False,
    missing_images: str = "error",
) -> List[dict]:
    """Detectron2 dataset dicts (plus ``relations`` int64 [R,3]) from a file in the schema above.

    Options as in :func:`kern_d2.data.datasets.vg.load_vg_sgg`.
    """
    data = _read_json(json_file)
    thing_classes, predicate_classes = _classes(data, json_file)
    category_id = {n: i for i, n in enumerate(thing_classes)}
    predicate_id = {n: i for i, n in enumerate(predicate_classes) if i > 0}
    images = data["images"]
    if not isinstance(images, list):
        raise DatasetFormatError(f"{json_file}: 'images' must be a list")
    parsed = [_parse_image(im, k, json_file, category_id, predicate_id) for k, im in enumerate(images)]
    ids = [im["id"] for im in images]
    if len(set(ids)) != len(ids):
        raise DatasetFormatError(f"{json_file}: image ids must be unique")
    arrays = SGGArrays(
        image_ids=np.array(ids, dtype=np.int64),
        file_names=[os.path.join(image_root, im["file_name"]) for im in images],
        heights=np.array([im["height"] for im in images], dtype=np.int64),
        widths=np.array([im["width"] for im in images], dtype=np.int64),
        box_counts=np.array([len(p[1]) for p in parsed], dtype=np.int64),
        boxes=np.concatenate([p[0] for p in parsed] + [np.zeros((0, 4))]),
        classes=np.concatenate([p[1] for p in parsed] + [np.zeros(0, dtype=np.int64)]),
        rel_counts=np.array([len(p[2]) for p in parsed], dtype=np.int64),
        relations=np.concatenate([p[2] for p in parsed] + [np.zeros((0, 3), dtype=np.int64)]),
    )
    arrays = clean_annotations(
        arrays, filter_empty_rels=filter_empty_rels, filter_non_overlap=filter_non_overlap, source=json_file,
        logger=logger,
    )
    arrays = keep_images(arrays, check_image_files(arrays.file_names, missing_images, json_file, logger))
    logger.info(f"Loaded {arrays.num_images} images, {len(arrays.relations)} relations from {json_file}")
    return to_dataset_dicts(arrays)


def register_sgg_json(name: str, json_file: str, image_root: str, **kwargs):
    """Register a dataset in the schema above (DatasetCatalog, lazily loaded; MetadataCatalog).

    ``kwargs`` go to :func:`load_sgg_json`, except ``priors_file``, which goes to the metadata.
    """
    register_sgg_dataset(
        name,
        load=lambda: load_sgg_json(json_file, image_root, **kwargs),
        read_classes=lambda: read_sgg_json_classes(json_file),
        classes_file=json_file,
        # Not "json_file": Detectron2's COCOEvaluator reads that key as a COCO annotation file (without it, it
        # converts the dataset dicts to COCO itself, which the detector phase's evaluation needs).
        metadata=dict(sgg_json_file=json_file, image_root=image_root),
        priors_file=kwargs.pop("priors_file", None),  # popped before any load: not a loader argument
    )
