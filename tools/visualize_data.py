#!/usr/bin/env python
"""Draw the ground-truth scene graphs of a registered dataset, one picture per image.

    python tools/visualize_data.py --dataset toy_train --output vis/ --num-images 8
    python tools/visualize_data.py --dataset vg150_val --output vis/ --image-ids 2343 2367

Boxes are labelled with ``metadata.thing_classes``, arrows with ``metadata.predicate_classes``; the panel lists
the relations in annotation order. Pictures are ``<output>/<image_id>.png``.
"""
import argparse
import logging
import os
import re
import sys
from typing import List, Optional, Sequence

from kern_d2.utils.cli import add_tool_arguments, debug_enabled, quiet_dependency_warnings

quiet_dependency_warnings()  # before Detectron2's imports

import numpy as np  # noqa: E402

from detectron2.data import DatasetCatalog  # noqa: E402
from detectron2.structures import BoxMode  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

import kern_d2.data  # noqa: E402,F401  (registers the builtin datasets)
from kern_d2.config_check import ConfigError, unregistered_dataset_error  # noqa: E402
from kern_d2.data import DatasetFormatError, register_user_datasets  # noqa: E402
from kern_d2.data.datasets.registration import sgg_dataset_classes  # noqa: E402
from kern_d2.utils.image_io import ImageReadError, read_image  # noqa: E402
from kern_d2.utils.visualizer import MAX_LONG_SIDE, draw_scene_graph, save_image  # noqa: E402

logger = logging.getLogger("kern_d2.visualize_data")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="a registered dataset name, e.g. toy_train")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the pictures")
    parser.add_argument("--num-images", type=int, default=10, help="draw the first N images (ignored with --image-ids)")
    parser.add_argument("--image-ids", nargs="+", help="draw these images (their image_id)")
    parser.add_argument("--max-triplets", type=int, default=30, help="relations drawn per picture")
    return add_tool_arguments(parser)


def select_dicts(dicts: Sequence[dict], image_ids: Optional[Sequence[str]], num_images: int) -> List[dict]:
    """The dataset dicts with the given image ids (compared as strings, in the order asked), else the first N."""
    if not image_ids:
        return list(dicts[: max(0, num_images)])
    by_id = {str(d["image_id"]): d for d in dicts}
    missing = [i for i in image_ids if str(i) not in by_id]
    if missing:
        raise KeyError(f"image ids not in the dataset: {missing}")
    return [by_id[str(i)] for i in image_ids]


def gt_scene_graph(record: dict, thing_classes: Sequence[str], predicate_classes: Sequence[str]):
    """(boxes [G,4] XYXY_ABS, label names, triplets (subject, object, predicate name, None)) of one dataset dict."""
    annotations = record.get("annotations", [])
    boxes = np.asarray(
        [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations], dtype=np.float64
    ).reshape(-1, 4)
    where = f"image {record.get('image_id')} ({record.get('file_name')})"
    labels = []
    for a in annotations:
        if not 0 <= a["category_id"] < len(thing_classes):
            raise ValueError(f"{where}: category_id {a['category_id']} has no name in thing_classes")
        labels.append(thing_classes[a["category_id"]])
    relations = np.asarray(record.get("relations", np.zeros((0, 3))), dtype=np.int64).reshape(-1, 3)
    if len(relations) and relations[:, 2].max() >= len(predicate_classes):
        raise ValueError(f"{where}: predicate {relations[:, 2].max()} has no name in predicate_classes")
    triplets = [(int(s), int(o), predicate_classes[int(p)], None) for s, o, p in relations]
    return boxes, labels, triplets


def draw_record(record: dict, thing_classes, predicate_classes, max_triplets: int, dataset_name: str) -> np.ndarray:
    loaded = read_image(record["file_name"], max_side=MAX_LONG_SIDE)
    boxes, labels, triplets = gt_scene_graph(record, thing_classes, predicate_classes)
    height, width = record.get("height", loaded.height), record.get("width", loaded.width)
    if (height, width) != (loaded.height, loaded.width):
        logger.warning(
            f"{record['file_name']}: dataset says {width}x{height} but the file is {loaded.width}x{loaded.height}; "
            "boxes are scaled to the file"
        )
    # Boxes are at the dataset's image size; the pixels may have been read reduced.
    boxes = boxes * np.array([loaded.rgb.shape[1] / width, loaded.rgb.shape[0] / height] * 2)
    title = f"{dataset_name}: image {record['image_id']}"
    return draw_scene_graph(loaded.rgb, boxes, labels, triplets, max_triplets=max_triplets, title=title)


def _file_stem(image_id) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(image_id)) or "image"


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    setup_logger(name="kern_d2")
    try:
        register_user_datasets(args.register)
        if args.dataset not in DatasetCatalog.list():
            raise unregistered_dataset_error(args.dataset, "--dataset")
        # Names the missing or broken file (class names, then the annotations) rather than the metadata.
        thing_classes, predicate_classes = sgg_dataset_classes(args.dataset)
        records = select_dicts(DatasetCatalog.get(args.dataset), args.image_ids, args.num_images)
    except (ConfigError, OSError, DatasetFormatError, KeyError, ValueError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        if debug_enabled(args):
            logger.exception(f"dataset {args.dataset!r}: {message}")
        else:
            logger.error(message if isinstance(e, ConfigError) else f"dataset {args.dataset!r}: {message}")
        return 2
    os.makedirs(args.output, exist_ok=True)
    written = 0
    for record in records:
        try:
            picture = draw_record(record, thing_classes, predicate_classes, args.max_triplets, args.dataset)
        except ImageReadError as e:
            logger.warning(f"skipped image {record['image_id']}: {e}")
            continue
        path = os.path.join(args.output, _file_stem(record["image_id"]) + ".png")
        save_image(path, picture)
        written += 1
    logger.info(f"{written} of {len(records)} pictures written to {args.output}")
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
