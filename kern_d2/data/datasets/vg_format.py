"""The VG150 file format (Stanford "iterative message passing" split): constants, box conversions, writers.

Files of one dataset:

- ``VG-SGG.h5`` (or ``VG-SGG-with-attri.h5``, which adds attribute fields): per image row ``split`` (0 train,
  2 test; 1 is a val split that the conversion script can write and the published convention ignores),
  ``img_to_first_box``/``img_to_last_box`` and ``img_to_first_rel``/``img_to_last_rel`` (inclusive, -1 when
  none); per box ``labels`` [B,1] (1..C) and ``boxes_1024`` [B,4] (x_center, y_center, w, h) at a scale where
  the image's longer side is 1024; per relation ``relationships`` [R,2] (global box indices) and
  ``predicates`` [R,1] (1..P-1).
- ``VG-SGG-dicts.json``: ``idx_to_label``/``idx_to_predicate`` with 1-based string keys (plus counts).
- ``image_data.json``: one entry per h5 row, in order: ``image_id``, ``width``, ``height``, ``url``.

The writers are used by the toy generator, the tests and the benchmark.
"""
import json
import os
from typing import Dict, List, Sequence

import cv2
import h5py
import numpy as np

from .arrays import segment_starts

BOX_SCALE = 1024
SPLIT_TRAIN, SPLIT_VAL, SPLIT_TEST = 0, 1, 2  # the published convention uses no row of split 1
# image_data.json lists these four VG images, the h5 does not: dropping them aligns the two row by row.
CORRUPT_IMAGE_IDS = (1592, 1722, 4616, 4617)
H5_KEYS = (
    "split",
    "img_to_first_box",
    "img_to_last_box",
    "img_to_first_rel",
    "img_to_last_rel",
    "labels",
    "boxes_1024",
    "relationships",
    "predicates",
)
NO_RELATION = "__no_relation__"


def boxes_1024_to_xyxy(boxes_1024: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """[B,4] (xc, yc, w, h) at the 1024 scale -> [B,4] float64 XYXY at true size; ``scale`` [B] =
    max(width, height) / 1024 of each box's image."""
    b = boxes_1024.astype(np.float64)
    x1 = b[:, 0] - b[:, 2] / 2
    y1 = b[:, 1] - b[:, 3] / 2
    xyxy = np.stack([x1, y1, x1 + b[:, 2], y1 + b[:, 3]], axis=1)
    return xyxy * np.asarray(scale, dtype=np.float64)[:, None]


def xyxy_to_boxes_1024(boxes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Inverse of :func:`boxes_1024_to_xyxy`, rounded to int32 as in the VG files."""
    b = np.asarray(boxes, dtype=np.float64) / np.asarray(scale, dtype=np.float64)[:, None]
    wh = b[:, 2:] - b[:, :2]
    center = b[:, :2] + wh / 2
    return np.round(np.concatenate([center, wh], axis=1)).astype(np.int32)


def box_index_ranges(counts: np.ndarray):
    """(first, last) inclusive flat indices per image, -1 for images with count 0 (the h5 convention)."""
    counts = np.asarray(counts, dtype=np.int64)
    first = segment_starts(counts)
    last = first + counts - 1
    empty = counts == 0
    return np.where(empty, -1, first).astype(np.int32), np.where(empty, -1, last).astype(np.int32)


def write_vg_h5(
    h5_file: str,
    split: np.ndarray,
    box_counts: np.ndarray,
    boxes_1024: np.ndarray,
    labels: np.ndarray,
    rel_counts: np.ndarray,
    relations: np.ndarray,
    *,
    with_attributes: bool = False,
    attrs: Dict[str, object] = None,
):
    """Write a VG-format h5.

    Args:
        split: [N] 0 train / 2 test. box_counts, rel_counts: [N] boxes and relations per image.
        boxes_1024: [B,4] int (xc, yc, w, h) at the 1024 scale. labels: [B] 1-based.
        relations: [R,3] (subject, object, predicate) with subject/object LOCAL to the image (0-based); they are
            stored as global box indices, as in VG.
        with_attributes: also write Scene-Graph-Benchmark's ``attributes`` [B,10] field (zeros).
        attrs: h5 file attributes (e.g. the toy's ``num_val_images``).
    """
    box_counts = np.asarray(box_counts, dtype=np.int64)
    relations = np.asarray(relations, dtype=np.int64).reshape(-1, 3)
    first_box, last_box = box_index_ranges(box_counts)
    first_rel, last_rel = box_index_ranges(rel_counts)
    rel_owner = np.repeat(np.arange(len(box_counts)), np.asarray(rel_counts, dtype=np.int64))
    global_pairs = relations[:, :2] + segment_starts(box_counts)[rel_owner][:, None]
    boxes_1024 = np.asarray(boxes_1024, dtype=np.int32).reshape(-1, 4)
    with h5py.File(h5_file, "w") as f:
        f["split"] = np.asarray(split, dtype=np.int32)
        f["img_to_first_box"], f["img_to_last_box"] = first_box, last_box
        f["img_to_first_rel"], f["img_to_last_rel"] = first_rel, last_rel
        f["labels"] = np.asarray(labels, dtype=np.int32).reshape(-1, 1)
        f["boxes_1024"] = boxes_1024
        f["boxes_512"] = np.round(boxes_1024 / 2).astype(np.int32)
        f["active_object_mask"] = np.ones((len(boxes_1024), 1), dtype=bool)
        f["relationships"] = global_pairs.astype(np.int32)
        f["predicates"] = relations[:, 2:3].astype(np.int32)
        if with_attributes:
            f["attributes"] = np.zeros((len(boxes_1024), 10), dtype=np.int32)
        for key, value in (attrs or {}).items():
            f.attrs[key] = value


def write_vg_dicts(
    dicts_file: str,
    thing_classes: Sequence[str],
    predicate_names: Sequence[str],
    object_counts: Sequence[int] = None,
    predicate_counts: Sequence[int] = None,
    *,
    with_attributes: bool = False,
):
    """Write ``VG-SGG-dicts.json``; ``predicate_names`` EXCLUDES "no relation" (VG: 50 names)."""
    object_counts = object_counts if object_counts is not None else [0] * len(thing_classes)
    predicate_counts = predicate_counts if predicate_counts is not None else [0] * len(predicate_names)
    data = {
        "idx_to_label": {str(i + 1): n for i, n in enumerate(thing_classes)},
        "label_to_idx": {n: i + 1 for i, n in enumerate(thing_classes)},
        "idx_to_predicate": {str(i + 1): n for i, n in enumerate(predicate_names)},
        "predicate_to_idx": {n: i + 1 for i, n in enumerate(predicate_names)},
        "object_count": {n: int(c) for n, c in zip(thing_classes, object_counts)},
        "predicate_count": {n: int(c) for n, c in zip(predicate_names, predicate_counts)},
    }
    if with_attributes:
        data.update({"idx_to_attribute": {}, "attribute_to_idx": {}, "attribute_count": {}})
    with open(dicts_file, "w") as f:
        json.dump(data, f, indent=1)


def write_image_data(image_data_file: str, image_ids, widths, heights, url_prefix: str = "VG_100K/"):
    """Write ``image_data.json``: one entry per image, with ``url`` = url_prefix + "<image_id>.jpg"."""
    entries: List[dict] = [
        {"image_id": int(i), "width": int(w), "height": int(h), "url": f"{url_prefix}{int(i)}.jpg",
         "coco_id": None, "flickr_id": None}
        for i, w, h in zip(np.asarray(image_ids).tolist(), np.asarray(widths).tolist(), np.asarray(heights).tolist())
    ]
    os.makedirs(os.path.dirname(os.path.abspath(image_data_file)), exist_ok=True)
    with open(image_data_file, "w") as f:
        json.dump(entries, f)


def write_vg_dataset(
    output_dir: str,
    *,
    split: np.ndarray,
    image_ids: np.ndarray,
    widths: np.ndarray,
    heights: np.ndarray,
    box_counts: np.ndarray,
    boxes: np.ndarray,
    classes: np.ndarray,
    rel_counts: np.ndarray,
    relations: np.ndarray,
    thing_classes: Sequence[str],
    predicate_names: Sequence[str],
    extra_image_ids: Sequence[int] = (),
    h5_attrs: Dict[str, object] = None,
):
    """Write ``VG-SGG.h5``, ``VG-SGG-dicts.json`` (with class and predicate counts) and ``image_data.json`` of N
    images in ``output_dir``.

    boxes: [B, 4] XYXY at true size (stored at the 1024 scale). classes: [B] 0-based. relations: [R, 3] local
    (subject, object, predicate 1..P-1). extra_image_ids: ids listed in image_data.json but not in the h5 (VG's
    corrupt images), inserted at their sorted places among ``image_ids`` (800 x 600).
    """
    box_counts = np.asarray(box_counts, dtype=np.int64)
    scale = np.repeat(np.maximum(widths, heights) / float(BOX_SCALE), box_counts)
    write_vg_h5(os.path.join(output_dir, "VG-SGG.h5"), split=split, box_counts=box_counts,
                boxes_1024=xyxy_to_boxes_1024(boxes, scale), labels=np.asarray(classes) + 1, rel_counts=rel_counts,
                relations=relations, attrs=h5_attrs)
    write_vg_dicts(
        os.path.join(output_dir, "VG-SGG-dicts.json"), thing_classes, predicate_names,
        object_counts=np.bincount(classes, minlength=len(thing_classes)),
        predicate_counts=np.bincount(np.asarray(relations)[:, 2], minlength=len(predicate_names) + 1)[1:],
    )
    positions = np.searchsorted(image_ids, extra_image_ids)
    write_image_data(os.path.join(output_dir, "image_data.json"), np.insert(image_ids, positions, extra_image_ids),
                     np.insert(widths, positions, 800), np.insert(heights, positions, 600))


def write_generated_image(output_dir: str, image_id: int, pixels: np.ndarray) -> None:
    """``output_dir/VG_100K/<image_id>.jpg`` (JPEG quality 92)."""
    image_dir = os.path.join(output_dir, "VG_100K")
    os.makedirs(image_dir, exist_ok=True)
    cv2.imwrite(os.path.join(image_dir, f"{image_id}.jpg"), pixels, [cv2.IMWRITE_JPEG_QUALITY, 92])


def write_generated_dataset(
    output_dir: str, images: Sequence, num_train: int, num_val: int, thing_classes: Sequence[str],
    predicate_names: Sequence[str], write_images: bool = True,
):
    """Write generated images (toy, synth) as a VG-format dataset with ids 1..N: :func:`write_vg_dataset` plus
    ``VG_100K/<id>.jpg``.

    ``images``: the first ``num_train`` are the train split (of which the first ``num_val`` are val, stored as the
    h5 attribute ``num_val_images``), the rest test. Each has ``width``, ``height``, ``boxes`` [n,4] XYXY,
    ``classes`` [n] (0-based), ``relations`` [r,3] (local subject, object, predicate 1..P-1) and ``pixels`` (BGR;
    not used when ``write_images`` is False: the caller wrote them with :func:`write_generated_image`).
    """
    image_ids = np.arange(1, len(images) + 1)
    if write_images:
        for image_id, image in zip(image_ids, images):
            write_generated_image(output_dir, int(image_id), image.pixels)
    write_vg_dataset(
        output_dir,
        split=np.array([SPLIT_TRAIN] * num_train + [SPLIT_TEST] * (len(images) - num_train)),
        image_ids=image_ids,
        widths=np.array([im.width for im in images]),
        heights=np.array([im.height for im in images]),
        box_counts=np.array([len(im.boxes) for im in images]),
        boxes=np.concatenate([im.boxes for im in images]),
        classes=np.concatenate([im.classes for im in images]),
        rel_counts=np.array([len(im.relations) for im in images]),
        relations=np.concatenate([np.asarray(im.relations).reshape(-1, 3) for im in images]),
        thing_classes=thing_classes,
        predicate_names=predicate_names,
        h5_attrs={"num_val_images": num_val},
    )
