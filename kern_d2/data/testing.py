"""Test-only writers (as ``detectron2/utils/testing.py``): scene graphs in the published Open Images (BGNN / PySGG)
and GQA-200 (SHA-GCL) file layouts.

No OI or GQA data ship with kern_d2, so tests and benchmarks write small files of each layout from the documented
format (datasets/README.md, :mod:`kern_d2.data.datasets.oi`, :mod:`kern_d2.data.datasets.gqa`): from any Detectron2
SGG dataset dicts (:func:`write_oi_layout`, :func:`write_gqa_layout`), from random scene graphs
(:func:`random_scene_graph_dicts`), or from the generated toy dataset with its images (:func:`toy_in_layout`),
which the toy-sized trainer can learn from.
"""
import json
import os
import shutil
import tempfile
from typing import Dict, List, Sequence

import numpy as np

from .datasets.vg import load_vg_sgg, read_vg_classes
from .generators.toy import generate_toy_dataset

LAYOUTS = ("oi", "gqa")


def _per_image_lists(dicts: List[dict], label_base: int, predicate_base: int):
    """(boxes, labels, relations) per image as json-ready lists, ids shifted to the file's bases."""
    boxes = [[list(map(float, a["bbox"])) for a in d["annotations"]] for d in dicts]
    labels = [[int(a["category_id"]) + label_base for a in d["annotations"]] for d in dicts]
    relations = [
        (np.asarray(d["relations"], dtype=np.int64).reshape(-1, 3) + [0, 0, predicate_base - 1]).tolist()
        for d in dicts
    ]
    return boxes, labels, relations


def _copy_image(source: str, target: str, copy_images: bool):
    if copy_images and os.path.isfile(source):
        shutil.copyfile(source, target)


def oi_image_stem(image_id: int) -> str:
    """Open Images style file stem (16 hex digits) of an integer id."""
    return f"{int(image_id):016x}"


def write_oi_layout(root: str, splits: Dict[str, List[dict]], thing_classes: Sequence[str],
                    predicate_classes: Sequence[str], copy_images: bool = True):
    """``root/annotations/{categories_dict.json, vrd-<split>-anno.json}`` and ``root/images/<img_fn>.jpg``.

    ``splits``: {"train" | "val" | "test": dataset dicts (XYXY_ABS boxes, 0-based classes, relations with
    predicates 1..P-1)}; ``predicate_classes`` includes "no relation" first (it is not written).
    """
    annotations, images = os.path.join(root, "annotations"), os.path.join(root, "images")
    os.makedirs(annotations, exist_ok=True)
    os.makedirs(images, exist_ok=True)
    with open(os.path.join(annotations, "categories_dict.json"), "w") as f:
        json.dump({"obj": list(thing_classes), "rel": list(predicate_classes[1:])}, f)
    for split, dicts in splits.items():
        boxes, labels, relations = _per_image_lists(dicts, label_base=0, predicate_base=0)
        records = []
        for d, b, c, r in zip(dicts, boxes, labels, relations):
            stem = oi_image_stem(d["image_id"])
            records.append({"bbox": b, "det_labels": c, "rel": r, "img_size": [int(d["width"]), int(d["height"])],
                            "img_fn": stem})
            _copy_image(d["file_name"], os.path.join(images, f"{stem}.jpg"), copy_images)
        with open(os.path.join(annotations, f"vrd-{split}-anno.json"), "w") as f:
            json.dump(records, f)


def write_gqa_layout(root: str, train: List[dict], test: List[dict], thing_classes: Sequence[str],
                     predicate_classes: Sequence[str], copy_images: bool = True):
    """``root/{GQA_200_ID_Info.json, GQA_200_Train.json, GQA_200_Test.json}`` and ``root/images/<id>.jpg``.

    Dicts as in :func:`write_oi_layout`; ids are written 1-based with "__background__" at index 0 of both lists.
    """
    images = os.path.join(root, "images")
    os.makedirs(images, exist_ok=True)
    with open(os.path.join(root, "GQA_200_ID_Info.json"), "w") as f:
        json.dump({"ind_to_classes": ["__background__", *thing_classes],
                   "ind_to_predicates": ["__background__", *predicate_classes[1:]]}, f)
    for name, dicts in (("GQA_200_Train.json", train), ("GQA_200_Test.json", test)):
        boxes, labels, relations = _per_image_lists(dicts, label_base=1, predicate_base=1)
        filenames = [f"{d['image_id']}.jpg" for d in dicts]
        for d, filename in zip(dicts, filenames):
            _copy_image(d["file_name"], os.path.join(images, filename), copy_images)
        with open(os.path.join(root, name), "w") as f:
            json.dump({"filenames_all": filenames,
                       "img_info_all": [{"image_id": str(d["image_id"]), "width": int(d["width"]),
                                         "height": int(d["height"])} for d in dicts],
                       "gt_boxes_all": boxes, "gt_classes_all": labels, "relationships_all": relations}, f)


def random_scene_graph_dicts(rng: np.random.Generator, num_images: int, num_classes: int, num_predicates: int,
                             max_boxes: int = 8, max_relations: int = 10, first_id: int = 1) -> List[dict]:
    """Random SGG dataset dicts: integer-pixel XYXY boxes inside 64-640 px images (at least 1 px wide and high),
    1..max_boxes boxes and 0..max_relations relations (predicates 1..num_predicates-1, duplicates possible) per
    image; no image files."""
    def intervals(size, n):
        start = rng.integers(0, size, size=n)
        return np.stack([start, start + 1 + (rng.random(n) * (size - start)).astype(np.int64)], axis=1)

    dicts = []
    for k in range(num_images):
        width, height = (int(v) for v in rng.integers(64, 641, size=2))
        n = int(rng.integers(1, max_boxes + 1))
        x, y = intervals(width, n), intervals(height, n)
        r = int(rng.integers(0, max_relations + 1)) if n > 1 else 0
        pairs = rng.integers(0, n, size=(r, 2))
        pairs = pairs[pairs[:, 0] != pairs[:, 1]]
        relations = np.concatenate([pairs, rng.integers(1, num_predicates, size=(len(pairs), 1))], axis=1)
        dicts.append({
            "file_name": "", "image_id": first_id + k, "height": height, "width": width,
            "annotations": [{"bbox": [float(x[i, 0]), float(y[i, 0]), float(x[i, 1]), float(y[i, 1])],
                             "bbox_mode": 0, "category_id": int(c)}
                            for i, c in enumerate(rng.integers(0, num_classes, size=n))],
            "relations": relations.astype(np.int64).reshape(-1, 3),
        })
    return dicts


def toy_in_layout(root: str, layout: str, num_train: int = 120, num_test: int = 40, num_val: int = 10,
                  seed: int = 0) -> dict:
    """The generated toy dataset (images included) written in ``layout`` ("oi" | "gqa") under ``root``.

    OI gets three files: val = the first ``num_val`` train images, train = the rest. GQA gets the train and test
    files; register it with ``num_val_images=num_val`` (val = the first test images, as in GQA-200). Returns the
    class lists and split sizes.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    with tempfile.TemporaryDirectory(prefix="kern_d2_toy_") as vg_root:
        generate_toy_dataset(vg_root, num_train=num_train, num_test=num_test, num_val=num_val, seed=seed)
        files = [os.path.join(vg_root, n) for n in ("VG-SGG.h5", "VG-SGG-dicts.json", "image_data.json", "VG_100K")]
        split = {s: load_vg_sgg(*files, s, num_val_images=num_val) for s in ("train", "val", "test")}
        things, predicates = read_vg_classes(files[1])
        if layout == "oi":
            write_oi_layout(root, split, things, predicates)
        else:
            write_gqa_layout(root, split["val"] + split["train"], split["test"], things, predicates)
    return {"thing_classes": things, "predicate_classes": predicates,
            "sizes": {s: len(d) for s, d in split.items()}}
