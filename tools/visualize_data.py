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

from detectron2.data import DatasetCatalog  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

import kern_d2.data  # noqa: E402,F401  (registers the builtin datasets)
from kern_d2.config_check import ConfigError, unregistered_dataset_error  # noqa: E402
from kern_d2.data import DatasetFormatError, register_user_datasets  # noqa: E402
from kern_d2.data.datasets.registration import sgg_dataset_classes  # noqa: E402
from kern_d2.utils.data_visualizer import draw_dataset_dict  # noqa: E402
from kern_d2.utils.image_io import ImageReadError  # noqa: E402
from kern_d2.utils.visualizer import save_image  # noqa: E402

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
            picture = draw_dataset_dict(record, thing_classes, predicate_classes, args.max_triplets,
                                        title=f"{args.dataset}: image {record['image_id']}")
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
