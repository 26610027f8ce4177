"""How much of the gt an SGDet prediction can reach at all, whatever its predicate scores and K.

A gt relation (s, o, p) is *reachable* when some scored pair (i, j) of the prediction has i matching gt box s (same
label, IoU >= the threshold) and j matching o: the best any predicate scores could do is to find it. The share of
reachable gt relations bounds ng-R@K from above for every K, so it separates what the detection and pair stages
lose (too few boxes, wrong labels, a pair rule such as ``REQUIRE_OVERLAP`` that drops the pair) from what the
relation head loses. ``tools/sgdet_reach.py`` reports it for a model on a dataset.
"""
from typing import Dict, NamedTuple, Sequence

import numpy as np

from .sgg_metrics import gt_arrays, pairwise_iou, prediction_arrays

__all__ = ["ImageReach", "image_reach", "summarize_reach"]


class ImageReach(NamedTuple):
    """One image: per gt relation [R] whether it is reachable and whether its gt boxes overlap (IoU > 0); the
    counts of predicted boxes and scored pairs."""

    reachable: np.ndarray
    gt_boxes_overlap: np.ndarray
    num_boxes: int
    num_pairs: int


def image_reach(gt: dict, pred: dict, iou_thresh: float = 0.5, legacy_iou: bool = False, key=0) -> ImageReach:
    """gt and pred in the format of :func:`kern_d2.evaluation.sgg_metrics.image_hits` (SGDet: predicted boxes)."""
    where = f"image {gt.get('image_id', key)}"
    gt_boxes, gt_labels, gt_rels, _ = gt_arrays(gt, where)
    boxes, labels, _, rel_pairs, _ = prediction_arrays(gt_boxes, gt_labels, gt_rels, pred, "sgdet", where)
    match = (pairwise_iou(gt_boxes, boxes, legacy=legacy_iou) >= iou_thresh) & (gt_labels[:, None] == labels[None])
    # [R, M]: the pair's subject matches the relation's subject and its object the relation's object
    hits = match[gt_rels[:, 0]][:, rel_pairs[:, 0]] & match[gt_rels[:, 1]][:, rel_pairs[:, 1]]
    gt_iou = pairwise_iou(gt_boxes, gt_boxes, legacy=legacy_iou)
    return ImageReach(
        reachable=hits.any(axis=1) if hits.size else np.zeros(gt_rels.shape[0], dtype=bool),
        gt_boxes_overlap=gt_iou[gt_rels[:, 0], gt_rels[:, 1]] > 0,
        num_boxes=int(boxes.shape[0]),
        num_pairs=int(rel_pairs.shape[0]),
    )


def summarize_reach(records: Sequence[ImageReach]) -> Dict[str, float]:
    """``reach`` (% of gt relations reachable), ``gt_overlapping`` (% of gt relations whose gt boxes overlap),
    ``boxes_per_image``, ``pairs_per_image``, ``images`` and ``gt_relations``."""
    reachable = np.concatenate([r.reachable for r in records]) if records else np.zeros(0, dtype=bool)
    overlap = np.concatenate([r.gt_boxes_overlap for r in records]) if records else np.zeros(0, dtype=bool)
    n = max(len(records), 1)
    return {
        "reach": float(100.0 * reachable.mean()) if reachable.size else float("nan"),
        "gt_overlapping": float(100.0 * overlap.mean()) if overlap.size else float("nan"),
        "boxes_per_image": sum(r.num_boxes for r in records) / n,
        "pairs_per_image": sum(r.num_pairs for r in records) / n,
        "images": len(records),
        "gt_relations": int(reachable.size),
    }
