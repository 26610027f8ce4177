"""KERN's knowledge priors: object co-occurrence A_obj [C, C] and predicate prior A_rel [C, C, P].

- ``A_obj[i, j] = P(object j present | object i present)`` over the training images (``compute_priors``).
- ``A_rel[s, o, k] = p(predicate k | subject class s, object class o)``: gt relation counts for k >= 1, and for
  k = 0 ("no relation") the number of ordered pairs of overlapping gt boxes that carry no relation; +1 on every
  entry, then each (s, o) row normalised to sum 1.

``compute_priors(..., construction="released")`` builds them instead as KERN's released code does
(``prior_matrices/generate_knowledge.py`` of yuweihao/KERN over neural-motifs' VG loader); see ``compute_priors``.

The .npz also holds ``predicate_counts`` [P] (``compute_predicate_counts``): the gt relation rows of each predicate,
which the long-tail switches of :mod:`kern_d2.modeling.long_tail` need; files written before it existed still load.
It records the construction in ``construction`` ("kern_d2" | "released"); files without it load as "kern_d2". A model
refuses a file built otherwise than MODEL.ROI_RELATION_HEAD.PRIOR_CONSTRUCTION says (``KnowledgePriors.from_file``).

They are saved as a pickle-free .npz (``save_priors``/``load_priors``) and held by ``KnowledgePriors`` as buffers, so
that Detectron2 checkpoints carry them; ``build_priors`` makes a model's from its config.
"""
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from detectron2.data import MetadataCatalog
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager

from kern_d2.config import resolve_variant
from kern_d2.config_check import check_classes_match_config, check_priors_file
from kern_d2.utils.atomic_write import atomic_write

__all__ = [
    "CONSTRUCTIONS", "RELEASED_BOX_SCALE", "compute_priors", "compute_predicate_counts", "save_priors",
    "load_priors", "check_construction", "KnowledgePriors", "build_priors",
]

# Pair enumeration for column 0 runs over chunks of images holding about this many ordered box pairs.
_PAIRS_PER_CHUNK = 1 << 21

# How the priors were built: kern_d2's construction or that of KERN's released code (the npz field ``construction``).
CONSTRUCTIONS = ("kern_d2", "released")
# The released code tests overlap on the VG h5 boxes, at the scale where an image's longer side is 1024 pixels.
RELEASED_BOX_SCALE = 1024.0
# Intersections of at most this (in pixels of the box scale) count as none: boxes brought back to the 1024 scale
# from the dicts' true-size coordinates miss the integer grid by rounding errors (~1e-13), and an intersection of
# exactly 0 (adjacent boxes under the +1 convention) must not turn positive.
_RELEASED_OVERLAP_EPS = 1e-6


def _image_name(d: dict, index: int) -> str:
    return str(d.get("file_name", d.get("image_id", f"#{index}")))


def _gather(dataset_dicts: Sequence[dict], num_classes: int, num_predicates: int):
    """Concatenate every image's boxes, classes and relations (relations in global box indices)."""
    classes, boxes, relations, boxes_per_image = [], [], [], []
    offset = 0
    for index, d in enumerate(dataset_dicts):
        annotations = d.get("annotations", [])
        image_classes = np.array([a["category_id"] for a in annotations], dtype=np.int64)
        image_boxes = np.array([_xyxy(a) for a in annotations], dtype=np.float64).reshape(-1, 4)
        rels = np.asarray(d.get("relations", np.zeros((0, 3))), dtype=np.int64).reshape(-1, 3)
        n = len(annotations)
        if image_classes.size and (image_classes.min() < 0 or image_classes.max() >= num_classes):
            raise ValueError(
                f"compute_priors: image {_image_name(d, index)} has category_id outside [0, {num_classes}): "
                f"{sorted(set(image_classes[(image_classes < 0) | (image_classes >= num_classes)].tolist()))}"
            )
        if rels.size and (rels[:, :2].min() < 0 or rels[:, :2].max() >= n):
            raise ValueError(
                f"compute_priors: image {_image_name(d, index)} has a relation whose subject/object index is "
                f"outside [0, {n}) (it has {n} annotations)"
            )
        if rels.size and (rels[:, 2].min() < 1 or rels[:, 2].max() >= num_predicates):
            raise ValueError(
                f"compute_priors: image {_image_name(d, index)} has a predicate outside [1, {num_predicates}) "
                "(0 is 'no relation' and may not be annotated)"
            )
        classes.append(image_classes)
        boxes.append(image_boxes)
        relations.append(rels + np.array([offset, offset, 0]))
        boxes_per_image.append(n)
        offset += n
    cat = lambda parts, shape: np.concatenate(parts) if parts else np.zeros(shape)  # noqa: E731
    return (
        cat(classes, (0,)).astype(np.int64),
        cat(boxes, (0, 4)).astype(np.float64),
        cat(relations, (0, 3)).astype(np.int64),
        np.array(boxes_per_image, dtype=np.int64),
    )


def _xyxy(annotation: dict) -> List[float]:
    mode = annotation.get("bbox_mode", BoxMode.XYXY_ABS)
    if mode == BoxMode.XYXY_ABS:
        return annotation["bbox"]
    return BoxMode.convert(list(annotation["bbox"]), mode, BoxMode.XYXY_ABS)


def _cooccurrence(classes, image_of_box, num_images, num_classes, per_box_pair) -> np.ndarray:
    counts = np.bincount(image_of_box * num_classes + classes, minlength=num_images * num_classes)
    counts = counts.reshape(num_images, num_classes).astype(np.float64)  # boxes of class c in image m
    if per_box_pair:
        # Ordered pairs of distinct boxes (a, b) in one image with class(a) = i, class(b) = j, over boxes of class i.
        numerator = counts.T @ counts
        numerator[np.diag_indices(num_classes)] -= counts.sum(0)  # n_i (n_i - 1) pairs of distinct boxes
        denominator = counts.sum(0)
    else:
        # Images with both i and j over images with i; diagonal: images with >= 2 instances of i over images with i.
        present = (counts > 0).astype(np.float64)
        numerator = present.T @ present
        numerator[np.diag_indices(num_classes)] = (counts >= 2).sum(0)
        denominator = present.sum(0)
    return np.divide(numerator, denominator[:, None], out=np.zeros_like(numerator), where=denominator[:, None] > 0)


def _ordered_box_pairs(boxes_per_image: np.ndarray):
    """Yield (subj, obj) int64 arrays of global box indices: every ordered pair of distinct boxes of one image, in
    chunks of about ``_PAIRS_PER_CHUNK`` pairs."""
    num_boxes = int(boxes_per_image.sum())
    first_box = np.concatenate([[0], np.cumsum(boxes_per_image)[:-1]]).astype(np.int64)
    image_of_box = np.repeat(np.arange(boxes_per_image.shape[0]), boxes_per_image)
    partners = boxes_per_image[image_of_box]  # candidate partners of each box: the boxes of its image
    pair_end = np.cumsum(partners)
    start = 0
    while start < num_boxes:
        # Boxes [start, stop) with about _PAIRS_PER_CHUNK pairs (at least one box).
        base = pair_end[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(pair_end, base + _PAIRS_PER_CHUNK, side="right")))
        group = np.arange(start, stop)
        subj = np.repeat(group, partners[group])
        group_first_pair = np.repeat(np.cumsum(partners[group]) - partners[group], partners[group])
        obj = first_box[image_of_box[subj]] + np.arange(subj.shape[0]) - group_first_pair
        keep = subj != obj
        yield subj[keep], obj[keep]
        start = stop


def _unrelated_overlap_counts(classes, boxes, relations, boxes_per_image, num_classes) -> np.ndarray:
    """[C, C] counts of ordered pairs of distinct boxes of one image that overlap (area > 0) and carry no relation."""
    num_boxes = classes.shape[0]
    counts = np.zeros(num_classes * num_classes, dtype=np.int64)
    related = np.unique(relations[:, 0] * num_boxes + relations[:, 1])
    for subj, obj in _ordered_box_pairs(boxes_per_image):
        bs, bo = boxes[subj], boxes[obj]
        overlap = (np.minimum(bs[:, 2], bo[:, 2]) > np.maximum(bs[:, 0], bo[:, 0])) & (
            np.minimum(bs[:, 3], bo[:, 3]) > np.maximum(bs[:, 1], bo[:, 1])
        )
        subj, obj = subj[overlap], obj[overlap]
        keys = subj * num_boxes + obj
        position = np.searchsorted(related, keys).clip(max=max(related.shape[0] - 1, 0))
        unrelated = related[position] != keys if related.size else np.ones(keys.shape, dtype=bool)
        counts += np.bincount(
            classes[subj[unrelated]] * num_classes + classes[obj[unrelated]], minlength=num_classes * num_classes
        )
    return counts.reshape(num_classes, num_classes)


def _released_box_factors(dataset_dicts: Sequence[dict], box_scale: Optional[float]) -> np.ndarray:
    """[N] factor bringing each image's boxes to the released code's box scale (longer side ``box_scale``)."""
    if box_scale is None:
        return np.ones(len(dataset_dicts), dtype=np.float64)
    factors = np.empty(len(dataset_dicts), dtype=np.float64)
    for index, d in enumerate(dataset_dicts):
        if not d.get("height") or not d.get("width"):
            raise ValueError(
                f"compute_priors(construction='released'): image {_image_name(d, index)} has no height/width, needed "
                f"to bring its boxes to the released box scale (longer side {box_scale:g}); pass box_scale=None to "
                "test overlap in the dicts' own coordinates"
            )
        factors[index] = float(box_scale) / max(float(d["height"]), float(d["width"]))
    return factors


def _released_overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[K] bool: boxes a[k] and b[k] ([K, 4] XYXY) intersect under the +1-pixel convention of the released code's
    ``bbox_overlaps`` (inclusive pixel coordinates: width min(x2) - max(x1) + 1 > 0, height likewise)."""
    inter_w = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]) + 1.0
    inter_h = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]) + 1.0
    return (inter_w > _RELEASED_OVERLAP_EPS) & (inter_h > _RELEASED_OVERLAP_EPS)


def _released_priors(dataset_dicts, num_classes, num_predicates, box_scale) -> Tuple[np.ndarray, np.ndarray]:
    """float64 (obj_cooccurrence [C, C], rel_prior [C, C, P]) of the released construction (see compute_priors)."""
    classes, boxes, relations, boxes_per_image = _gather(dataset_dicts, num_classes, num_predicates)
    num_images = boxes_per_image.shape[0]
    image_of_box = np.repeat(np.arange(num_images), boxes_per_image)
    boxes = boxes * _released_box_factors(dataset_dicts, box_scale)[image_of_box][:, None]

    # The training set of the VG loader (filter_non_overlap): relations between overlapping boxes, the images left
    # with one. A box always overlaps itself, so a relation (i, i) stays.
    relations = relations[_released_overlap(boxes[relations[:, 0]], boxes[relations[:, 1]])]
    kept_image = np.zeros(num_images, dtype=bool)
    kept_image[image_of_box[relations[:, 0]]] = True
    box_kept = kept_image[image_of_box]
    new_index = np.cumsum(box_kept) - 1
    classes, boxes = classes[box_kept], boxes[box_kept]
    relations = np.stack([new_index[relations[:, 0]], new_index[relations[:, 1]], relations[:, 2]], axis=1)
    boxes_per_image = boxes_per_image[kept_image]
    num_images = boxes_per_image.shape[0]
    image_of_box = np.repeat(np.arange(num_images), boxes_per_image)
    first_box = np.concatenate([[0], np.cumsum(boxes_per_image)[:-1]]).astype(np.int64)
    cells = image_of_box * num_classes + classes
    per_image = np.bincount(cells, minlength=num_images * num_classes).reshape(num_images, num_classes)
    per_image = per_image.astype(np.float64)  # boxes of class c in image m
    present = per_image > 0

    # Co-occurrence, the executed line: with K = the image's number of distinct classes, every ordered pair of
    # distinct positions among its FIRST K boxes adds 1 at (class, class) of those boxes; +1 on the diagonal per
    # class with >= 2 instances; over the images containing the row's class.
    first_k = (np.arange(classes.shape[0]) - first_box[image_of_box]) < present.sum(1)[image_of_box]
    head = np.bincount(cells[first_k], minlength=num_images * num_classes).reshape(num_images, num_classes)
    head = head.astype(np.float64)
    numerator = head.T @ head
    numerator[np.diag_indices(num_classes)] += (per_image >= 2).sum(0) - head.sum(0)
    denominator = present.sum(0).astype(np.float64)
    cooccurrence = np.divide(
        numerator, denominator[:, None], out=np.zeros_like(numerator), where=denominator[:, None] > 0
    )

    # Predicate prior: every remaining relation row counts; column 0 = every ordered pair of distinct overlapping
    # boxes (related or not), or every ordered pair of distinct boxes in an image without an overlapping pair; +1
    # on column 0 alone; rows normalised.
    relation_keys = (classes[relations[:, 0]] * num_classes + classes[relations[:, 1]]) * num_predicates
    counts = np.bincount(relation_keys + relations[:, 2], minlength=num_classes * num_classes * num_predicates)
    counts = counts.reshape(num_classes, num_classes, num_predicates).astype(np.float64)
    background = np.zeros(num_classes * num_classes, dtype=np.int64)
    overlaps_in_image = np.zeros(num_images, dtype=np.int64)
    for subj, obj in _ordered_box_pairs(boxes_per_image):
        overlap = _released_overlap(boxes[subj], boxes[obj])
        subj, obj = subj[overlap], obj[overlap]
        background += np.bincount(classes[subj] * num_classes + classes[obj], minlength=num_classes * num_classes)
        overlaps_in_image += np.bincount(image_of_box[subj], minlength=num_images)
    background = background.reshape(num_classes, num_classes).astype(np.float64)
    fallback = per_image[overlaps_in_image == 0]
    background += fallback.T @ fallback
    background[np.diag_indices(num_classes)] -= fallback.sum(0)
    counts[:, :, 0] = background + 1.0
    rel_prior = counts / counts.sum(axis=2, keepdims=True)
    return cooccurrence, rel_prior


def compute_priors(
    dataset_dicts: Sequence[dict],
    num_classes: int,
    num_predicates: int,
    per_box_pair: bool = False,
    *,
    construction: str = "kern_d2",
    box_scale: Optional[float] = RELEASED_BOX_SCALE,
) -> Tuple[np.ndarray, np.ndarray]:
    """Knowledge priors of a dataset (Detectron2 dicts with ``annotations`` and ``relations``).

    Args:
        dataset_dicts: the training images.
        num_classes: C. num_predicates: P, including 0 = "no relation".
        per_box_pair: kern_d2 construction only: count co-occurrence per ordered box pair instead of per distinct
            class pair (see below).
        construction: "kern_d2" (below) or "released" (KERN's released code, further below).
        box_scale: released construction only: the overlap test runs on boxes scaled so that each image's longer
            side is ``box_scale`` pixels (1024: the VG h5 boxes the released code tests), as its +1-pixel convention
            is in those pixels; None = in the dicts' own coordinates. Needs each dict's height and width.
    Returns:
        obj_cooccurrence float32 [C, C] and rel_prior float32 [C, C, P].

    Co-occurrence, default (per distinct class pair): A[i, j] = (#images containing i and j) / (#images containing
    i) for i != j, and A[i, i] = (#images with at least 2 instances of i) / (#images containing i), i.e. the
    probability that another instance of i is present. With ``per_box_pair``: A[i, j] = (#ordered pairs of distinct
    boxes (a, b) in one image with class(a) = i, class(b) = j) / (#boxes of class i), i.e. the mean number of other
    j boxes in the image of an i box (can exceed 1). This per-box count is kern_d2's own option: it matches neither
    the executed nor the intended line of KERN's released code (see "released" below). Rows of classes that never
    occur are 0.

    Predicate prior: counts[s, o, k] = number of gt relation rows (s, o, k), k >= 1, duplicates included;
    counts[s, o, 0] = number of ordered pairs of distinct gt boxes (subject class s, object class o) whose boxes
    intersect with positive area and that have no gt relation; rel_prior = (counts + 1) / sum_k (counts + 1).

    ``construction="released"``, as ``prior_matrices/generate_knowledge.py`` of yuweihao/KERN builds them:

    - Images: those of neural-motifs' VG training loader (``filter_non_overlap``, ``filter_duplicate_rels=False``):
      each image keeps only the relations whose subject and object boxes overlap under the +1-pixel convention of
      ``bbox_overlaps`` (min(x2) - max(x1) + 1 > 0 and likewise in y, at ``box_scale``); images left without a
      relation (or without any) are dropped. Both matrices are built over these images, from all their boxes.
    - Predicate prior: counts[s, o, k], k >= 1 = the remaining relation rows, duplicates included; counts[s, o, 0] =
      every ordered pair of distinct overlapping boxes (+1 convention), related or not (all ordered pairs of
      distinct boxes in an image without an overlapping pair, which only a relation of a box with itself leaves);
      +1 on column 0 only; rel_prior = counts / sum_k counts (so an unseen (s, o) gets [1, 0, ..., 0]).
    - Co-occurrence, the line the released code EXECUTES: per image, with K its number of distinct classes, every
      ordered pair of distinct positions (a, b) among its first K boxes (annotation order) adds 1 to
      A[class(a), class(b)] (the loop indexes the per-box labels with positions in the list of distinct classes);
      A[i, i] gains 1 per image with >= 2 instances of i; row i is divided by the number of images containing i.
      The INTENDED line indexes the list of distinct classes instead, i.e. counts each image once per ordered pair
      of distinct classes present: kern_d2's per-class-pair counting (on the filtered images).
    - The released matrices have a background class at index 0; kern_d2's have none, so its row and column are left
      out (all zero in the co-occurrence; in the predicate prior they are [1, 0, ..., 0]: only the +1 of column 0).
      A class absent from the images gets a zero co-occurrence row (the released code divides 0 by 0 there).
    """
    if construction not in CONSTRUCTIONS:
        raise ValueError(f"compute_priors: construction must be one of {CONSTRUCTIONS}, got {construction!r}")
    if construction == "released":
        if per_box_pair:
            raise ValueError("compute_priors: per_box_pair is a kern_d2 option, not part of the released construction")
        cooccurrence, rel_prior = _released_priors(dataset_dicts, num_classes, num_predicates, box_scale)
        return cooccurrence.astype(np.float32), rel_prior.astype(np.float32)
    classes, boxes, relations, boxes_per_image = _gather(dataset_dicts, num_classes, num_predicates)
    num_images = boxes_per_image.shape[0]
    image_of_box = np.repeat(np.arange(num_images), boxes_per_image)
    cooccurrence = _cooccurrence(classes, image_of_box, num_images, num_classes, per_box_pair)

    relation_keys = (classes[relations[:, 0]] * num_classes + classes[relations[:, 1]]) * num_predicates
    counts = np.bincount(relation_keys + relations[:, 2], minlength=num_classes * num_classes * num_predicates)
    counts = counts.reshape(num_classes, num_classes, num_predicates).astype(np.float64)
    counts[:, :, 0] = _unrelated_overlap_counts(classes, boxes, relations, boxes_per_image, num_classes)
    counts += 1.0
    rel_prior = counts / counts.sum(axis=2, keepdims=True)
    return cooccurrence.astype(np.float32), rel_prior.astype(np.float32)


def compute_predicate_counts(dataset_dicts: Sequence[dict], num_classes: int, num_predicates: int) -> np.ndarray:
    """int64 [P]: the number of gt relation rows of each predicate k >= 1 (duplicates included, the rows that
    ``compute_priors`` counts). Entry 0 ("no relation") is 0: how often a pair has no relation is set by the pair
    sampler, not by the annotations."""
    _, _, relations, _ = _gather(dataset_dicts, num_classes, num_predicates)
    counts = np.bincount(relations[:, 2], minlength=num_predicates).astype(np.int64)
    counts[0] = 0
    return counts


def _check_predicate_counts(predicate_counts: np.ndarray, num_predicates: int, where: str) -> None:
    if predicate_counts.shape != (num_predicates,):
        raise ValueError(
            f"{where}: predicate_counts must be [P] with P = {num_predicates}, got {predicate_counts.shape}"
        )
    if predicate_counts.dtype.kind not in "iu" or (predicate_counts < 0).any():
        raise ValueError(f"{where}: predicate_counts must be non-negative integers")


def _check_priors(obj_cooccurrence, rel_prior, thing_classes, predicate_classes, where: str) -> None:
    c = obj_cooccurrence.shape[0] if obj_cooccurrence.ndim == 2 else -1
    if obj_cooccurrence.shape != (c, c):
        raise ValueError(f"{where}: obj_cooccurrence must be [C, C], got {obj_cooccurrence.shape}")
    if rel_prior.ndim != 3 or rel_prior.shape[:2] != (c, c):
        raise ValueError(f"{where}: rel_prior must be [C, C, P] with C = {c}, got {rel_prior.shape}")
    if len(thing_classes) != c or len(predicate_classes) != rel_prior.shape[2]:
        raise ValueError(
            f"{where}: {len(thing_classes)} thing_classes and {len(predicate_classes)} predicate_classes for "
            f"matrices of {c} classes and {rel_prior.shape[2]} predicates"
        )
    for name, array in (("obj_cooccurrence", obj_cooccurrence), ("rel_prior", rel_prior)):
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{where}: {name} has non-finite values")


def save_priors(
    path: str,
    obj_cooccurrence: np.ndarray,
    rel_prior: np.ndarray,
    thing_classes: Sequence[str],
    predicate_classes: Sequence[str],
    predicate_counts: Optional[np.ndarray] = None,
    construction: str = "kern_d2",
) -> None:
    """Write the priors to ``path`` (.npz, no pickle) atomically: a temporary file renamed over ``path``.
    ``predicate_counts`` (int [P], from ``compute_predicate_counts``) is optional, for the long-tail switches.
    ``construction`` ("kern_d2" | "released", as given to ``compute_priors``) goes in the field ``construction``."""
    if construction not in CONSTRUCTIONS:
        raise ValueError(f"save_priors({path}): construction must be one of {CONSTRUCTIONS}, got {construction!r}")
    obj_cooccurrence = np.asarray(obj_cooccurrence, dtype=np.float32)
    rel_prior = np.asarray(rel_prior, dtype=np.float32)
    _check_priors(obj_cooccurrence, rel_prior, thing_classes, predicate_classes, f"save_priors({path})")
    extra = {}
    if predicate_counts is not None:
        extra["predicate_counts"] = np.asarray(predicate_counts)
        _check_predicate_counts(extra["predicate_counts"], rel_prior.shape[2], f"save_priors({path})")
        extra["predicate_counts"] = extra["predicate_counts"].astype(np.int64)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda f: np.savez(
        f,
        obj_cooccurrence=obj_cooccurrence,
        rel_prior=rel_prior,
        thing_classes=np.array([str(x) for x in thing_classes], dtype=np.str_),
        predicate_classes=np.array([str(x) for x in predicate_classes], dtype=np.str_),
        construction=np.array(construction, dtype=np.str_),
        **extra,
    ))


def _check_names(path: str, kind: str, found: List[str], expected: Optional[Sequence[str]]) -> None:
    if expected is None:
        return
    expected = [str(x) for x in expected]
    if len(found) != len(expected):
        raise ValueError(f"priors file {path}: {len(found)} {kind} but the dataset has {len(expected)}")
    for index, (a, b) in enumerate(zip(found, expected)):
        if a != b:
            raise ValueError(f"priors file {path}: {kind}[{index}] is {a!r} but the dataset's is {b!r}")


def load_priors(
    path: str, thing_classes: Optional[Sequence[str]] = None, predicate_classes: Optional[Sequence[str]] = None
) -> Dict[str, object]:
    """Read a priors .npz (no pickle). Returns ``obj_cooccurrence``, ``rel_prior`` (float32 arrays),
    ``thing_classes``, ``predicate_classes`` (lists of str), ``predicate_counts`` (int64 [P], or None in a file
    written before kern_d2 stored them) and ``construction`` ("kern_d2" | "released"; "kern_d2" in a file written
    before kern_d2 recorded it). Given names must match the file's exactly."""
    with PathManager.open(path, "rb") as f:
        with np.load(f, allow_pickle=False) as data:
            missing = {"obj_cooccurrence", "rel_prior", "thing_classes", "predicate_classes"} - set(data.files)
            if missing:
                raise ValueError(f"priors file {path}: missing arrays {sorted(missing)}")
            priors = {
                "obj_cooccurrence": data["obj_cooccurrence"].astype(np.float32),
                "rel_prior": data["rel_prior"].astype(np.float32),
                "thing_classes": [str(x) for x in data["thing_classes"]],
                "predicate_classes": [str(x) for x in data["predicate_classes"]],
                "predicate_counts": data["predicate_counts"] if "predicate_counts" in data.files else None,
                "construction": str(data["construction"]) if "construction" in data.files else "kern_d2",
            }
    if priors["construction"] not in CONSTRUCTIONS:
        raise ValueError(
            f"priors file {path}: construction must be one of {CONSTRUCTIONS}, got {priors['construction']!r}"
        )
    _check_priors(
        priors["obj_cooccurrence"], priors["rel_prior"], priors["thing_classes"], priors["predicate_classes"],
        f"priors file {path}",
    )
    if priors["predicate_counts"] is not None:
        _check_predicate_counts(priors["predicate_counts"], priors["rel_prior"].shape[2], f"priors file {path}")
        priors["predicate_counts"] = priors["predicate_counts"].astype(np.int64)
    _check_names(path, "thing_classes", priors["thing_classes"], thing_classes)
    _check_names(path, "predicate_classes", priors["predicate_classes"], predicate_classes)
    return priors


def check_construction(path: str, found: str, expected: str) -> None:
    """ValueError unless the priors file ``path``, built with construction ``found``, is what the config asks."""
    if expected not in CONSTRUCTIONS:
        raise ValueError(f"construction must be one of {CONSTRUCTIONS}, got {expected!r}")
    if found != expected:
        rebuild = "with --released" if expected == "released" else "without --released"
        raise ValueError(
            f"priors file {path} holds priors of the {found!r} construction, but the config asks for {expected!r} "
            f"(MODEL.ROI_RELATION_HEAD.PRIOR_CONSTRUCTION, which defaults to MODEL.ROI_RELATION_HEAD.VARIANT's "
            f"choice): rebuild the file with tools/compute_priors.py {rebuild}, or set "
            f"MODEL.ROI_RELATION_HEAD.PRIOR_CONSTRUCTION {found}"
        )


class KnowledgePriors(nn.Module):
    """The priors as persistent buffers: ``obj_cooccurrence`` [C, C], ``rel_prior`` [C, C, P], ``predicate_counts``
    int64 [P] (all 0 when unknown), and ``sizes`` = (C, P) int64 [2], whose fixed shape lets a checkpoint of another
    class count fail loudly on load (Detectron2's checkpointer skips tensors of mismatched shapes with only a
    warning).
    Build with ``from_file``, ``uniform`` (the no-priors ablation) or ``empty`` (to be filled by a checkpoint).
    ``construction`` is the file's ("kern_d2" | "released"; None otherwise): a plain attribute, not in checkpoints."""

    def __init__(
        self,
        obj_cooccurrence: torch.Tensor,
        rel_prior: torch.Tensor,
        loaded: bool = True,
        predicate_counts: Optional[torch.Tensor] = None,
        source: str = "the given matrices",
        construction: Optional[str] = None,
    ):
        super().__init__()
        c, p = rel_prior.shape[0], rel_prior.shape[2]
        if obj_cooccurrence.shape != (c, c) or rel_prior.shape != (c, c, p):
            raise ValueError(
                f"KnowledgePriors: obj_cooccurrence {tuple(obj_cooccurrence.shape)} and rel_prior "
                f"{tuple(rel_prior.shape)} must be [C, C] and [C, C, P]"
            )
        if predicate_counts is None:
            predicate_counts = torch.zeros(p, dtype=torch.int64)
        if tuple(predicate_counts.shape) != (p,):
            raise ValueError(f"KnowledgePriors: predicate_counts must be [{p}], got {tuple(predicate_counts.shape)}")
        self.register_buffer("obj_cooccurrence", obj_cooccurrence.to(torch.float32).clone())
        self.register_buffer("rel_prior", rel_prior.to(torch.float32).clone())
        self.register_buffer("predicate_counts", predicate_counts.to(torch.int64).clone())
        self.register_buffer("sizes", torch.tensor([c, p], dtype=torch.int64))
        self._loaded = loaded
        self._has_predicate_counts = bool(self.predicate_counts[1:].sum() > 0)
        self._source = source
        self.construction = construction

    @property
    def num_classes(self) -> int:
        return self.obj_cooccurrence.shape[0]

    @property
    def num_predicates(self) -> int:
        return self.rel_prior.shape[2]

    @classmethod
    def from_file(
        cls,
        path: str,
        thing_classes: Optional[Sequence[str]] = None,
        predicate_classes: Optional[Sequence[str]] = None,
        construction: Optional[str] = None,
    ) -> "KnowledgePriors":
        """Priors from a .npz of ``save_priors``; names, when given, must match the file's, and so must the
        construction ("kern_d2" | "released", see ``check_construction``)."""
        priors = load_priors(path, thing_classes, predicate_classes)
        if construction is not None:
            check_construction(path, priors["construction"], construction)
        counts = priors["predicate_counts"]
        return cls(
            torch.from_numpy(priors["obj_cooccurrence"]),
            torch.from_numpy(priors["rel_prior"]),
            predicate_counts=None if counts is None else torch.from_numpy(counts),
            source=f"priors file {path}",
            construction=priors["construction"],
        )

    @classmethod
    def uniform(cls, num_classes: int, num_predicates: int) -> "KnowledgePriors":
        """The no-knowledge ablation: every co-occurrence 1/C and every predicate 1/P. Both matrices then have
        rows summing to 1, so a node's message is the plain mean of its neighbours' states (no class preferred)."""
        return cls(
            torch.full((num_classes, num_classes), 1.0 / num_classes),
            torch.full((num_classes, num_classes, num_predicates), 1.0 / num_predicates),
            source="the uniform priors of MODEL.ROI_RELATION_HEAD.USE_PRIORS False",
        )

    @classmethod
    def empty(cls, num_classes: int, num_predicates: int) -> "KnowledgePriors":
        """Zero buffers of the right shapes, for a model whose checkpoint brings the priors (see ``check_loaded``)."""
        return cls(
            torch.zeros(num_classes, num_classes), torch.zeros(num_classes, num_classes, num_predicates), loaded=False,
            source="the empty priors (to be filled by a checkpoint)",
        )

    def check_loaded(self) -> None:
        """Raise unless the priors came from a file, ``uniform`` or a checkpoint (no device sync)."""
        if not self._loaded:
            raise RuntimeError(
                f"KnowledgePriors ({self.num_classes} classes, {self.num_predicates} predicates) are empty: set "
                "MODEL.ROI_RELATION_HEAD.PRIORS_FILE (make one with tools/compute_priors.py), turn "
                "MODEL.ROI_RELATION_HEAD.USE_PRIORS off, or load a checkpoint of a KERN model, which carries them"
            )

    def require_predicate_counts(self, needed_by: str) -> torch.Tensor:
        """``predicate_counts`` [P]; raises, naming where the priors came from, when they are unknown (no sync)."""
        if not self._has_predicate_counts:
            raise ValueError(
                f"{needed_by} needs the number of training relations of each predicate (predicate_counts), which "
                f"the model's priors lack (they come from {self._source}: a priors file written before kern_d2 "
                "stored the counts, a checkpoint of a model built from such a file, or uniform priors). Re-run "
                "tools/compute_priors.py to rewrite the priors file with its predicate_counts, and point "
                "MODEL.ROI_RELATION_HEAD.PRIORS_FILE at it (with USE_PRIORS True)"
            )
        return self.predicate_counts

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors):
        expected = {"sizes": (2,), "obj_cooccurrence": tuple(self.obj_cooccurrence.shape),
                    "rel_prior": tuple(self.rel_prior.shape), "predicate_counts": tuple(self.predicate_counts.shape)}
        found = {name: state_dict[prefix + name] for name in expected if prefix + name in state_dict}
        counts = None
        if "sizes" in found and tuple(found["sizes"].shape) == (2,):
            counts = tuple(int(x) for x in found["sizes"])
        elif "rel_prior" in found and found["rel_prior"].dim() == 3:
            counts = (found["rel_prior"].shape[0], found["rel_prior"].shape[2])
        wrong_counts = counts is not None and counts != (self.num_classes, self.num_predicates)
        if wrong_counts or any(tuple(t.shape) != expected[name] for name, t in found.items()):
            got = f"{counts[0]} classes and {counts[1]} predicates" if counts else "other shapes"
            raise ValueError(
                f"checkpoint priors ({prefix}*) have {got}, but the model has {self.num_classes} classes and "
                f"{self.num_predicates} predicates "
                "(MODEL.ROI_HEADS.NUM_CLASSES, MODEL.ROI_RELATION_HEAD.NUM_PREDICATES)"
            )
        brings_counts = "predicate_counts" in found and bool(found["predicate_counts"][1:].sum() > 0)
        if not brings_counts:
            # A checkpoint without predicate counts (older, or of a model whose priors had none) keeps this model's.
            state_dict[prefix + "predicate_counts"] = self.predicate_counts.clone()
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors
        )
        if "obj_cooccurrence" in found and "rel_prior" in found:
            self._loaded = True
        if brings_counts:
            self._has_predicate_counts, self._source = True, "the loaded checkpoint's priors"
        elif not self._has_predicate_counts and "rel_prior" in found:
            self._source = f"{self._source} and the loaded checkpoint's priors"

    def pair_prior(self, subj_labels: torch.Tensor, obj_labels: torch.Tensor) -> torch.Tensor:
        """[R, P]: p(predicate | subject class, object class) of each pair (labels int64 [R])."""
        return self.rel_prior[subj_labels, obj_labels]

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, num_predicates={self.num_predicates}, loaded={self._loaded}"


def _dataset_metadata(cfg) -> Tuple[Optional[list], Optional[list], Optional[str]]:
    """(thing_classes, predicate_classes, priors_file) of the first training (else test) dataset whose metadata has
    class names; Nones when none has."""
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        meta = MetadataCatalog.get(name)
        things, predicates = meta.get("thing_classes", None), meta.get("predicate_classes", None)
        if things is not None and predicates is not None:
            return list(things), list(predicates), meta.get("priors_file", None)
    return None, None, None


def build_priors(cfg) -> KnowledgePriors:
    """Priors from ``PRIORS_FILE`` (else the dataset metadata's ``priors_file``), checked against the dataset's
    class names and against ``PRIOR_CONSTRUCTION`` (kern_d2 / released, :func:`kern_d2.config.resolve_variant`);
    uniform ones when ``USE_PRIORS`` is off; or empty buffers that a checkpoint must fill (checked at the first
    forward)."""
    check_priors_file(cfg)  # an absent file: one line naming the key and the fix
    rel = cfg.MODEL.ROI_RELATION_HEAD
    num_classes, num_predicates = cfg.MODEL.ROI_HEADS.NUM_CLASSES, rel.NUM_PREDICATES
    # A model of other sizes than its datasets would fail later, obscurely.
    check_classes_match_config(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST) + list(cfg.DATASETS.SGG.VAL),
                               num_classes, num_predicates)
    things, predicates, metadata_priors_file = _dataset_metadata(cfg)
    if not rel.USE_PRIORS:
        return KnowledgePriors.uniform(num_classes, num_predicates)
    path = rel.PRIORS_FILE or metadata_priors_file
    if not path:
        return KnowledgePriors.empty(num_classes, num_predicates)
    # A file built otherwise (kern_d2 / released construction) than the config's PRIOR_CONSTRUCTION is refused.
    construction = resolve_variant(cfg)["PRIOR_CONSTRUCTION"]
    priors = KnowledgePriors.from_file(path, things, predicates, construction=construction)
    if priors.rel_prior.shape != (num_classes, num_classes, num_predicates):
        raise ValueError(
            f"priors file {path}: rel_prior has shape {tuple(priors.rel_prior.shape)} but the config asks for "
            f"{num_classes} classes (MODEL.ROI_HEADS.NUM_CLASSES) and {num_predicates} predicates "
            "(MODEL.ROI_RELATION_HEAD.NUM_PREDICATES)"
        )
    return priors
