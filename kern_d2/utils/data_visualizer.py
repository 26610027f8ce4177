"""Draw the ground-truth scene graph of a dataset dict (``tools/visualize_data.py``), with :mod:`.visualizer`."""
import logging
from typing import List, Optional, Sequence, Tuple

import numpy as np

from detectron2.structures import BoxMode

from .image_io import read_image
from .visualizer import MAX_LONG_SIDE, Triplet, draw_scene_graph

__all__ = ["draw_dataset_dict", "gt_scene_graph"]

logger = logging.getLogger(__name__)


def gt_scene_graph(record: dict, thing_classes: Sequence[str],
                   predicate_classes: Sequence[str]) -> Tuple[np.ndarray, List[str], List[Triplet]]:
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


def draw_dataset_dict(record: dict, thing_classes: Sequence[str], predicate_classes: Sequence[str],
                      max_triplets: int = 30, title: Optional[str] = None) -> np.ndarray:
    """:func:`draw_scene_graph` of a dataset dict's gt over its image file (read reduced to ``MAX_LONG_SIDE``);
    ``ImageReadError`` for an unreadable file. Relations are listed in annotation order."""
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
    return draw_scene_graph(loaded.rgb, boxes, labels, triplets, max_triplets=max_triplets, title=title)
