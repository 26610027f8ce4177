"""Open Images V6 / V4 visual relationships in the processed layout published with BGNN / PySGG.

Layout (one folder per version, e.g. ``$KERN_DATASETS/oiv6/``)::

    annotations/categories_dict.json     {"obj": [C object class names], "rel": [P-1 predicate names]}
    annotations/vrd-{train,val,test}-anno.json
        [{"img_fn": "003e363ce1f302cd", "img_size": [width, height],
          "bbox": [[x1, y1, x2, y2], ...],        # pixels of the image, XYXY
          "det_labels": [c, ...],                 # 0-based index into "obj"
          "rel": [[subject, object, p], ...]},    # 0-based box positions; p 0-based index into "rel"
         ...]
    images/<img_fn>.jpg

Each split is its own file (no val carved from train). ``image_id`` is the record's position in its file (the
files carry no numeric id). Boxes are clipped to the image; boxes without area are dropped with their relations
(counted and logged) as in the VG loader.
"""
import logging
import os
from typing import List, Tuple

import numpy as np

from ...evaluation.oi_metrics import OI_EVALUATOR_TYPE
from .arrays import DatasetFormatError
from .ragged import finish_split, flatten_image_lists, read_json_file, read_json_object
from .registration import register_sgg_dataset
from .vg_format import NO_RELATION

logger = logging.getLogger(__name__)

OI_SPLITS = ("train", "val", "test")
_FIELDS = {"boxes": "bbox", "labels": "det_labels", "relations": "rel"}


def oi_files(root: str, split: str) -> Tuple[str, str, str]:
    """(annotation json, categories json, image folder) of ``split`` in an Open Images folder ``root``."""
    if split not in OI_SPLITS:
        raise ValueError(f"split must be one of {OI_SPLITS}, got {split!r}")
    annotations = os.path.join(root, "annotations")
    return (os.path.join(annotations, f"vrd-{split}-anno.json"), os.path.join(annotations, "categories_dict.json"),
            os.path.join(root, "images"))


def _name_list(names, path: str, key: str) -> List[str]:
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise DatasetFormatError(f"{path}: '{key}' must be a non-empty list of names")
    return names


def read_oi_classes(categories_file: str) -> Tuple[List[str], List[str]]:
    """(thing_classes [C], predicate_classes [P] with "__no_relation__" first) from ``categories_dict.json``."""
    data = read_json_object(categories_file, "Open Images categories json", ("obj", "rel"))
    return (_name_list(data["obj"], categories_file, "obj"),
            [NO_RELATION] + _name_list(data["rel"], categories_file, "rel"))


def _number_pair(value):
    """``value`` as (a, b) floats, or (nan, nan) when it is not two numbers."""
    try:
        a, b = value
        return float(a), float(b)
    except (TypeError, ValueError):
        return np.nan, np.nan


def _image_fields(records, annotation_file: str):
    """(image file stems [N], widths [N], heights [N]) of the records, checked."""
    if not isinstance(records, list):
        raise DatasetFormatError(f"{annotation_file}: expected a list of image records")
    required = {"img_fn", "img_size", *_FIELDS.values()}
    bad = next((i for i, r in enumerate(records) if not isinstance(r, dict) or not required.issubset(r)), None)
    if bad is not None:
        raise DatasetFormatError(f"{annotation_file}: record {bad}: every record needs 'img_fn', 'img_size' "
                                 f"[width, height], 'bbox', 'det_labels' and 'rel'")
    sizes = np.array([_number_pair(r["img_size"]) for r in records], dtype=np.float64).reshape(len(records), 2)
    bad = np.flatnonzero(~np.isfinite(sizes).all(axis=1) | (sizes != np.round(sizes)).any(axis=1))
    if bad.size:
        raise DatasetFormatError(f"{annotation_file}: record {bad[0]}: 'img_size' must be [width, height] in "
                                 f"integer pixels, got {records[bad[0]]['img_size']!r}")
    return [str(r["img_fn"]) for r in records], sizes[:, 0].astype(np.int64), sizes[:, 1].astype(np.int64)


def load_oi_sgg(
    annotation_file: str,
    categories_file: str,
    image_root: str,
    filter_empty_rels: bool = True,
    filter_non_overlap: bool = False,
    missing_images: str = "error",
) -> List[dict]:
    """Detectron2 dataset dicts (plus ``relations`` int64 [R,3], predicates 1..P-1) of one Open Images split file.

    Options as in :func:`kern_d2.data.datasets.vg.load_vg_sgg`; images without relations are dropped by default (BGNN /
    PySGG do so for relation training and evaluation).
    """
    thing_classes, predicate_classes = read_oi_classes(categories_file)
    records = read_json_file(annotation_file, "Open Images annotation json")
    stems, widths, heights = _image_fields(records, annotation_file)

    def where(i):
        return f"{annotation_file}: record {i} (img_fn {stems[i]!r})"

    arrays = flatten_image_lists(
        image_ids=np.arange(len(records)),
        file_names=[os.path.join(image_root, f"{stem}.jpg") for stem in stems],
        widths=widths,
        heights=heights,
        boxes=[r["bbox"] for r in records],
        labels=[r["det_labels"] for r in records],
        relations=[r["rel"] for r in records],
        num_classes=len(thing_classes),
        num_predicates=len(predicate_classes),
        label_base=0,
        predicate_base=0,
        names=_FIELDS,
        where=where,
    )
    return finish_split(arrays, filter_empty_rels=filter_empty_rels, filter_non_overlap=filter_non_overlap,
                        missing_images=missing_images, source=annotation_file, logger=logger)


def register_oi_sgg(name: str, root: str, split: str, **kwargs):
    """Register ``split`` of the Open Images folder ``root`` (layout in the module docstring) as ``name``.

    ``kwargs`` go to :func:`load_oi_sgg`, except ``priors_file``, which goes to the metadata. The metadata's
    ``evaluator_type`` is ``"sgg_oi"``: SceneGraphEvaluator reports the Open Images metrics too.
    """
    annotation_file, categories_file, image_root = oi_files(root, split)
    register_sgg_dataset(
        name,
        load=lambda: load_oi_sgg(annotation_file, categories_file, image_root, **kwargs),
        read_classes=lambda: read_oi_classes(categories_file),
        classes_file=categories_file,
        metadata=dict(
            evaluator_type=OI_EVALUATOR_TYPE,
            annotation_file=annotation_file,
            categories_file=categories_file,
            image_root=image_root,
            split=split,
        ),
        priors_file=kwargs.pop("priors_file", None),
    )
