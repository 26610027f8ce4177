"""Reference for the released construction of KERN's knowledge priors, for tests/modeling/test_priors_released.py.

Written independently of kern_d2 (plain numpy, no kern_d2 import) with the STRUCTURE of the released code: the VG
training loader of neural-motifs (``load_graphs`` with ``filter_non_overlap``, ``filter_duplicate_rels=False``, its
Cython ``bbox_overlaps``) and ``prior_matrices/generate_knowledge.py`` of yuweihao/KERN, one Python loop per image
and per pair, as they run. Classes are 1-based here with background 0, as in the released matrices, which keep
index 0; ``drop_background`` gives kern_d2's shapes.

Input: Detectron2 dataset dicts with XYXY_ABS boxes (``bbox_mode`` 0 or absent), ``height``, ``width`` and
``relations`` [R, 3]. Boxes are brought to the released box scale (the image's longer side ``box_scale`` pixels,
1024 in the VG h5 files) before anything else, as the released loader reads them at that scale.
"""
from collections import Counter

import numpy as np


def bbox_overlaps(boxes, query_boxes):
    """IoU of every box with every query box, +1-pixel convention (inclusive pixel coordinates), 0 without
    intersection: the loop of neural-motifs' lib/fpn/box_intersections_cpu/bbox.pyx."""
    n, k = boxes.shape[0], query_boxes.shape[0]
    overlaps = np.zeros((n, k), dtype=np.float64)
    for q in range(k):
        query_area = (query_boxes[q, 2] - query_boxes[q, 0] + 1) * (query_boxes[q, 3] - query_boxes[q, 1] + 1)
        for b in range(n):
            iw = min(boxes[b, 2], query_boxes[q, 2]) - max(boxes[b, 0], query_boxes[q, 0]) + 1
            if iw > 0:
                ih = min(boxes[b, 3], query_boxes[q, 3]) - max(boxes[b, 1], query_boxes[q, 1]) + 1
                if ih > 0:
                    union = (boxes[b, 2] - boxes[b, 0] + 1) * (boxes[b, 3] - boxes[b, 1] + 1) + query_area - iw * ih
                    overlaps[b, q] = iw * ih / union
    return overlaps


class ReleasedTrainSet:
    """What the released script reads of ``VG(mode='train', filter_duplicate_rels=False)``: per kept image
    ``gt_boxes`` [n, 4] (box scale), ``gt_classes`` [n] (1-based), ``relationships`` [r, 3]; ``num_classes`` and
    ``num_predicates`` with the background."""

    def __init__(self, dataset_dicts, num_classes, num_predicates, box_scale=1024.0):
        self.num_classes = num_classes + 1
        self.num_predicates = num_predicates
        self.gt_boxes, self.gt_classes, self.relationships = [], [], []
        for d in dataset_dicts:
            for a in d["annotations"]:
                assert a.get("bbox_mode", 0) == 0, "the reference takes XYXY_ABS boxes"
            boxes_i = np.array([a["bbox"] for a in d["annotations"]], dtype=np.float64).reshape(-1, 4)
            if box_scale is not None:
                boxes_i = boxes_i * (box_scale / max(d["height"], d["width"]))
            classes_i = np.array([a["category_id"] + 1 for a in d["annotations"]], dtype=np.int64)
            rels = np.asarray(d["relations"], dtype=np.int64).reshape(-1, 3)
            if rels.shape[0] == 0:  # filter_empty_rels
                continue
            # filter_non_overlap: relations between overlapping boxes; an image left without one is dropped.
            inters = bbox_overlaps(boxes_i, boxes_i)
            keep = np.where(inters[rels[:, 0], rels[:, 1]] > 0.0)[0]
            if keep.size == 0:
                continue
            self.gt_boxes.append(boxes_i)
            self.gt_classes.append(classes_i)
            self.relationships.append(rels[keep])

    def __len__(self):
        return len(self.gt_classes)


def obj_cooccurrence(train, intended=False):
    """[C+1, C+1] float64, the loop of get_obj_cooccurrence_mat; ``intended``: index the list of distinct classes
    (what the loop means) instead of the per-box labels (what it executes). A class that never occurs gets a NaN row,
    as the released division 0 / 0 gives."""
    mat = np.zeros((train.num_classes, train.num_classes), dtype=np.int64)
    images_with = np.zeros(train.num_classes, dtype=np.int64)
    for index in range(len(train)):
        labels = train.gt_classes[index].copy()
        distinct = list(set(labels))
        for c in distinct:
            images_with[c] += 1
        for a, b in np.transpose(np.nonzero(1 - np.eye(len(distinct), dtype=np.int64))):
            if intended:
                mat[distinct[a], distinct[b]] += 1
            else:
                mat[labels[a], labels[b]] += 1
        for c, count in Counter(labels.tolist()).items():
            if count >= 2:
                mat[c, c] += 1
    images_with[0] = 1  # background: its row is 0 / 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return mat / images_with[:, None]


def candidate_pairs(boxes, must_overlap=True):
    """Ordered pairs of distinct boxes that overlap; all ordered pairs of distinct boxes when none does (box_filter)."""
    overlaps = bbox_overlaps(boxes, boxes) > 0
    np.fill_diagonal(overlaps, 0)
    every = np.ones_like(overlaps, dtype=bool)
    np.fill_diagonal(every, 0)
    pairs = np.column_stack(np.where(overlaps)) if must_overlap else np.column_stack(np.where(every))
    if pairs.size == 0:
        pairs = np.column_stack(np.where(every))
    return pairs


def rel_prior(train):
    """[C+1, C+1, P] float64: get_counts (must_overlap=True), +1 on the background counts, column 0 replaced by
    them, rows normalised."""
    fg = np.zeros((train.num_classes, train.num_classes, train.num_predicates), dtype=np.int64)
    bg = np.zeros((train.num_classes, train.num_classes), dtype=np.int64)
    for index in range(len(train)):
        labels = train.gt_classes[index].copy()
        rels = train.relationships[index].copy()
        for (s, o), k in zip(labels[rels[:, :2]], rels[:, 2]):
            fg[s, o, k] += 1
        for s, o in labels[np.array(candidate_pairs(train.gt_boxes[index]), dtype=int)]:
            bg[s, o] += 1
    bg += 1
    fg[:, :, 0] = bg
    return fg / fg.sum(2)[:, :, None]


def released_priors(dataset_dicts, num_classes, num_predicates, box_scale=1024.0, intended=False):
    """(obj_cooccurrence [C+1, C+1], rel_prior [C+1, C+1, P]), background at index 0, float64."""
    train = ReleasedTrainSet(dataset_dicts, num_classes, num_predicates, box_scale)
    return obj_cooccurrence(train, intended), rel_prior(train)


def drop_background(matrix):
    """The matrix without its background row and column (index 0 of the first two axes)."""
    return matrix[1:, 1:]
