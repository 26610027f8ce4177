"""GQA-200 (the VG150-like split of GQA published with SHA-GCL, CVPR 2022) in its published json layout.

Layout (``$KERN_DATASETS/gqa/``)::

    GQA_200_ID_Info.json   {"ind_to_classes": ["__background__", 200 names], "ind_to_predicates":
                            ["__background__", 100 names], ...}          (index 0 is the background)
    GQA_200_Train.json     {"filenames_all": ["<image id>.jpg", ...], "img_info_all": [{"width", "height", ...}],
    GQA_200_Test.json       "gt_boxes_all": [[[x1, y1, x2, y2], ...], ...],   # pixels of the image, XYXY
                            "gt_classes_all": [[c, ...], ...],                # 1-based into ind_to_classes
                            "relationships_all": [[[subject, object, p], ...], ...]}  # 0-based boxes, p 1-based
    images/<image id>.jpg

Splits (SHA-GCL's loader): train = the train file; test = the test file; **val = the first 5,000 images of the test
file** (after the filters), so val is part of test. Both val and test leave out the test file's 5,580th entry
(index 5579, no reason given in the code). Images without boxes or relations are dropped. ``image_id`` is the
record's position in its file (GQA ids are strings such as ``n161313``).
"""
import logging
import os
from typing import List, Sequence, Tuple

import numpy as np

from .arrays import DatasetFormatError, keep_images
from .ragged import finish_split, flatten_image_lists, read_json_object
from .registration import register_sgg_dataset
from .vg_format import NO_RELATION

logger = logging.getLogger(__name__)

GQA_SPLITS = ("train", "val", "test")
GQA_NUM_VAL_IMAGES = 5000
GQA_EXCLUDED_TEST_ROWS = (5579,)  # left out of val and test by SHA-GCL's loader
_KEYS = ("filenames_all", "img_info_all", "gt_boxes_all", "gt_classes_all", "relationships_all")
_FIELDS = {"boxes": "gt_boxes_all", "labels": "gt_classes_all", "relations": "relationships_all"}
_BACKGROUND = "__background__"


def gqa_files(root: str, split: str) -> Tuple[str, str, str]:
    """(annotation json, ID-info json, image folder) of ``split`` in a GQA-200 folder ``root``."""
    if split not in GQA_SPLITS:
        raise ValueError(f"split must be one of {GQA_SPLITS}, got {split!r}")
    name = "GQA_200_Train.json" if split == "train" else "GQA_200_Test.json"
    return os.path.join(root, name), os.path.join(root, "GQA_200_ID_Info.json"), os.path.join(root, "images")


def _without_background(names, path: str, key: str) -> List[str]:
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) for n in names):
        raise DatasetFormatError(f"{path}: '{key}' must be a list of names with '{_BACKGROUND}' first")
    if names[0] != _BACKGROUND:
        raise DatasetFormatError(f"{path}: '{key}'[0] must be '{_BACKGROUND}' (ids are 1-based), got {names[0]!r}")
    return names[1:]


def read_gqa_classes(id_info_file: str) -> Tuple[List[str], List[str]]:
    """(thing_classes [C], predicate_classes [P] with "__no_relation__" first) from ``GQA_200_ID_Info.json``."""
    data = read_json_object(id_info_file, "GQA ID-info json", ("ind_to_classes", "ind_to_predicates"))
    return (_without_background(data["ind_to_classes"], id_info_file, "ind_to_classes"),
            [NO_RELATION] + _without_background(data["ind_to_predicates"], id_info_file, "ind_to_predicates"))


def _read_annotations(annotation_file: str) -> dict:
    data = read_json_object(annotation_file, "GQA-200 annotation json", _KEYS)
    lengths = {k: len(data[k]) if isinstance(data[k], list) else -1 for k in _KEYS}
    if len(set(lengths.values())) != 1 or -1 in lengths.values():
        raise DatasetFormatError(f"{annotation_file}: the per-image lists must be lists of one length, got {lengths}")
    return data


def _sizes(infos, annotation_file: str):
    try:
        sizes = np.array([[i["width"], i["height"]] for i in infos], dtype=np.float64).reshape(len(infos), 2)
    except (KeyError, TypeError, ValueError):
        bad = next(k for k, i in enumerate(infos) if not isinstance(i, dict) or "width" not in i or "height" not in i)
        raise DatasetFormatError(f"{annotation_file}: img_info_all[{bad}] needs 'width' and 'height'") from None
    return sizes[:, 0].astype(np.int64), sizes[:, 1].astype(np.int64)


def load_gqa_sgg(
    annotation_file: str,
    id_info_file: str,
    image_root: str,
    split: str,
    num_val_images: int = GQA_NUM_VAL_IMAGES,
    excluded_test_rows: Sequence[int] = GQA_EXCLUDED_TEST_ROWS,
    filter_non_overlap: bool = False,
    missing_images: str = "error",
) -> List[dict]:
    """Detectron2 dataset dicts (plus ``relations`` int64 [R,3], predicates 1..P-1) of one GQA-200 split.

    Args:
        annotation_file: ``GQA_200_Train.json`` for "train", ``GQA_200_Test.json`` for "val" and "test".
        num_val_images: val = the first ``num_val_images`` test-file images left after the filters.
        excluded_test_rows: positions in the test file left out of val and test (rows past the end are ignored).
        filter_non_overlap, missing_images: as in :func:`kern_d2.data.datasets.vg.load_vg_sgg`.
    """
    if split not in GQA_SPLITS:
        raise ValueError(f"split must be one of {GQA_SPLITS}, got {split!r}")
    thing_classes, predicate_classes = read_gqa_classes(id_info_file)
    data = _read_annotations(annotation_file)
    names = [str(n) for n in data["filenames_all"]]
    widths, heights = _sizes(data["img_info_all"], annotation_file)

    def where(i):
        return f"{annotation_file}: image {i} ({names[i]})"

    arrays = flatten_image_lists(
        image_ids=np.arange(len(names)),
        file_names=[os.path.join(image_root, n) for n in names],
        widths=widths,
        heights=heights,
        boxes=data["gt_boxes_all"],
        labels=data["gt_classes_all"],
        relations=data["relationships_all"],
        num_classes=len(thing_classes),
        num_predicates=len(predicate_classes),
        label_base=1,
        predicate_base=1,
        names=_FIELDS,
        where=where,
    )
    source = f"{annotation_file} [{split}]"
    if split != "train":
        keep = np.ones(arrays.num_images, dtype=bool)
        rows = np.asarray(excluded_test_rows, dtype=np.int64)
        keep[rows[rows < arrays.num_images]] = False
        arrays = keep_images(arrays, keep)
    # The published loader drops images without boxes or relations before cutting val.
    arrays = keep_images(arrays, (arrays.box_counts > 0) & (arrays.rel_counts > 0))
    if split == "val":
        arrays = keep_images(arrays, np.arange(arrays.num_images) < num_val_images)
    return finish_split(arrays, filter_empty_rels=True, filter_non_overlap=filter_non_overlap,
                        missing_images=missing_images, source=source, logger=logger)


def register_gqa_sgg(name: str, root: str, split: str, **kwargs):
    """Register ``split`` of the GQA-200 folder ``root`` (layout in the module docstring) as ``name``.

    ``kwargs`` go to :func:`load_gqa_sgg`, except ``priors_file``, which goes to the metadata.
    """
    annotation_file, id_info_file, image_root = gqa_files(root, split)
    register_sgg_dataset(
        name,
        load=lambda: load_gqa_sgg(annotation_file, id_info_file, image_root, split, **kwargs),
        read_classes=lambda: read_gqa_classes(id_info_file),
        classes_file=id_info_file,
        metadata=dict(
            annotation_file=annotation_file,
            id_info_file=id_info_file,
            image_root=image_root,
            split=split,
        ),
        priors_file=kwargs.pop("priors_file", None),
    )
