"""Flat :class:`SGGArrays` from per-image annotation lists, the shape of the Open Images and GQA-200 json files.

Those files hold, per image, a list of boxes, a list of labels and a list of (subject, object, predicate) rows.
:func:`flatten_image_lists` concatenates them once (C-speed list flattening) and checks every field with numpy
over the whole split; a per-record scan runs only to name the first bad record in an error.
"""
import itertools
import json
import os
from typing import Callable, List, Sequence

import numpy as np

from .arrays import DatasetFormatError, SGGArrays, clean_annotations, keep_images, to_dataset_dicts
from .image_files import check_image_files


def read_json_file(path: str, what: str):
    """The parsed json at ``path``, read as UTF-8 (a leading byte-order mark is skipped) whatever the locale;
    FileNotFoundError naming ``what`` and the file, DatasetFormatError naming the file for every decoding error
    (bytes that are not UTF-8, e.g. a zip or a file cut inside a multi-byte character, and invalid JSON)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    with open(path, encoding="utf-8-sig") as f:
        try:
            return json.load(f)
        except UnicodeDecodeError as e:
            raise DatasetFormatError(
                f"{path}: not a UTF-8 text file, so not JSON (byte 0x{e.object[e.start]:02x} at offset {e.start}: "
                f"{e.reason}); the file is damaged or of another kind (an archive?): replace it with the {what}"
            ) from None
        except (json.JSONDecodeError, RecursionError) as e:
            raise DatasetFormatError(f"{path}: not valid JSON ({e})") from None


def read_json_object(path: str, what: str, keys: Sequence[str]) -> dict:
    """The json object at ``path``, which must have ``keys``; errors name the file and the missing keys."""
    data = read_json_file(path, what)
    missing = [k for k in keys if not isinstance(data, dict) or k not in data]
    if missing:
        raise DatasetFormatError(f"{path}: missing keys {missing} (expected {list(keys)})")
    return data


def finish_split(arrays: SGGArrays, *, filter_empty_rels: bool, filter_non_overlap: bool, missing_images: str,
                 source: str, logger) -> List[dict]:
    """Clean ``arrays`` (clip, degenerate boxes, filters), apply the missing-image policy, log the totals and return
    the dataset dicts; ``source`` names the split in the messages."""
    arrays = clean_annotations(arrays, filter_empty_rels=filter_empty_rels, filter_non_overlap=filter_non_overlap,
                               source=source, logger=logger)
    arrays = keep_images(arrays, check_image_files(arrays.file_names, missing_images, source, logger))
    logger.info(f"Loaded {arrays.num_images} images, {len(arrays.boxes)} boxes, {len(arrays.relations)} relations "
                f"from {source}")
    return to_dataset_dicts(arrays)


def _lengths(lists: Sequence, name: str, where: Callable[[int], str]) -> np.ndarray:
    """int64 [N] lengths of ``lists`` (each must be a list)."""
    try:
        return np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
    except TypeError:
        bad = next(i for i, x in enumerate(lists) if not isinstance(x, (list, tuple)))
        raise DatasetFormatError(f"{where(bad)}: '{name}' must be a list, got {type(lists[bad]).__name__}") from None


def _flat(lists: Sequence, counts: np.ndarray, width: int, name: str, where: Callable[[int], str]) -> np.ndarray:
    """float64 [sum(counts), width] (or [sum(counts)] for width 0) of the concatenated lists, all finite numbers."""
    shape = (int(counts.sum()), width) if width else (int(counts.sum()),)
    try:
        flat = np.array(list(itertools.chain.from_iterable(lists)), dtype=np.float64).reshape(shape)
        if np.isfinite(flat).all():
            return flat
    except (TypeError, ValueError):
        pass
    for i, rows in enumerate(lists):  # slow path, only to name the first bad record
        try:
            part = np.array(rows, dtype=np.float64).reshape((len(rows), width) if width else (len(rows),))
            ok = np.isfinite(part).all()
        except (TypeError, ValueError):
            ok = False
        if not ok:
            what = f"{width} numbers per entry" if width else "one number per entry"
            raise DatasetFormatError(f"{where(i)}: '{name}' must hold finite numbers, {what}")
    raise DatasetFormatError(f"{where(0)}: '{name}' could not be read")  # unreachable in practice


def _integers(values: np.ndarray, owner: np.ndarray, name: str, where: Callable[[int], str]) -> np.ndarray:
    bad = np.flatnonzero((values != np.round(values)).reshape(len(values), -1).any(axis=1))
    if bad.size:
        raise DatasetFormatError(f"{where(owner[bad[0]])}: '{name}' must hold integers, got {values[bad[0]].tolist()}")
    return values.astype(np.int64)


def _first_bad(mask: np.ndarray, owner: np.ndarray, message: Callable[[int, int], str]):
    """Raise DatasetFormatError(message(record, flat index)) at the first True of ``mask``, if any."""
    bad = np.flatnonzero(mask)
    if bad.size:
        raise DatasetFormatError(message(int(owner[bad[0]]), int(bad[0])) + f" ({bad.size} such entries)")


def flatten_image_lists(
    *,
    image_ids: np.ndarray,
    file_names: List[str],
    widths: np.ndarray,
    heights: np.ndarray,
    boxes: Sequence,
    labels: Sequence,
    relations: Sequence,
    num_classes: int,
    num_predicates: int,
    label_base: int,
    predicate_base: int,
    names: dict,
    where: Callable[[int], str],
) -> SGGArrays:
    """Validated flat arrays of N images given as per-image lists.

    Args:
        boxes: N lists of [x1, y1, x2, y2] in pixels; labels: N lists of class ids; relations: N lists of
            [subject, object, predicate] (subject/object: 0-based positions in the image's boxes).
        label_base / predicate_base: the id of the first class / first predicate in the file (0 or 1); classes
            become 0-based, predicates 1..num_predicates-1 (0 = no relation).
        names: the file's field names for boxes, labels and relations (for the messages), e.g.
            {"boxes": "bbox", "labels": "det_labels", "relations": "rel"}.
        where: record index -> text naming the file and the record.
    """
    bad = np.flatnonzero((widths <= 0) | (heights <= 0))
    if bad.size:
        raise DatasetFormatError(f"{where(bad[0])}: width and height must be positive, got "
                                 f"{widths[bad[0]]} x {heights[bad[0]]}")
    box_counts = _lengths(boxes, names["boxes"], where)
    label_counts = _lengths(labels, names["labels"], where)
    rel_counts = _lengths(relations, names["relations"], where)
    bad = np.flatnonzero(box_counts != label_counts)
    if bad.size:
        raise DatasetFormatError(f"{where(bad[0])}: {box_counts[bad[0]]} entries in '{names['boxes']}' but "
                                 f"{label_counts[bad[0]]} in '{names['labels']}'")
    box_owner = np.repeat(np.arange(len(box_counts)), box_counts)
    rel_owner = np.repeat(np.arange(len(rel_counts)), rel_counts)

    flat_boxes = _flat(boxes, box_counts, 4, names["boxes"], where)
    _first_bad((flat_boxes[:, 2] < flat_boxes[:, 0]) | (flat_boxes[:, 3] < flat_boxes[:, 1]), box_owner,
               lambda i, k: f"{where(i)}: box {k - int(box_counts[:i].sum())} {flat_boxes[k].tolist()} has x2 < x1 "
                            f"or y2 < y1 (expected [x1, y1, x2, y2] in pixels)")
    classes = _integers(_flat(labels, label_counts, 0, names["labels"], where), box_owner, names["labels"], where)
    classes -= label_base
    _first_bad((classes < 0) | (classes >= num_classes), box_owner,
               lambda i, k: f"{where(i)}: '{names['labels']}' must be in {label_base}..{num_classes - 1 + label_base}"
                            f", got {classes[k] + label_base}")
    rels = _integers(_flat(relations, rel_counts, 3, names["relations"], where), rel_owner, names["relations"], where)
    rels[:, 2] += 1 - predicate_base
    limit = box_counts[rel_owner]
    _first_bad(((rels[:, :2] < 0) | (rels[:, :2] >= limit[:, None])).any(axis=1), rel_owner,
               lambda i, k: f"{where(i)}: relation {rels[k, :2].tolist()} points outside the image's "
                            f"{box_counts[i]} boxes")
    _first_bad((rels[:, 2] < 1) | (rels[:, 2] >= num_predicates), rel_owner,
               lambda i, k: f"{where(i)}: predicate {rels[k, 2] - 1 + predicate_base} of '{names['relations']}' "
                            f"must be in {predicate_base}..{num_predicates - 2 + predicate_base}")
    return SGGArrays(
        image_ids=np.asarray(image_ids, dtype=np.int64),
        file_names=list(file_names),
        heights=np.asarray(heights, dtype=np.int64),
        widths=np.asarray(widths, dtype=np.int64),
        box_counts=box_counts,
        boxes=flat_boxes,
        classes=classes,
        rel_counts=rel_counts,
        relations=rels,
    )
