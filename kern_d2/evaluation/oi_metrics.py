"""Open Images relationship metrics as RelDN, BGNN and PySGG report them: R@50, mAP / wmAP of relationships and of
phrases, and score_wtd = 0.2 R@50 + 0.4 wmAP_rel + 0.4 wmAP_phr (semantics in datasets/README.md).

Per image (:func:`oi_image_record`): every predicted pair proposes its ``predicates_per_pair`` best predicates,
scored predicate score x subject score x object score; the ``top_k`` best of those (scores > ``min_score``) are the
image's detections. A record keeps, per gt triplet, the position of its first hit (labels equal, both boxes IoU >=
threshold: R@50) and, per detection, its predicate, score and best-overlapping gt of the same predicate and labels
(relationship: min of subject and object IoU; phrase: IoU of the union boxes). :func:`summarize_oi_records` pools the
detections of all images per predicate, ranks them by score and counts a detection as a true positive when its
overlap exceeds the threshold and its gt was not taken by a higher-ranked detection (Pascal VOC AP, all points).
"""
from typing import Dict, List, NamedTuple, Optional, Sequence

import numpy as np

from .sgg_metrics import MODES, _first_hit_ranks, gt_arrays, pairwise_iou, prediction_arrays, stable_topk_desc

__all__ = [
    "OI_EVALUATOR_TYPE",
    "OI_METRICS",
    "OIImageRecord",
    "OIMetricAccumulator",
    "average_precision",
    "oi_detections",
    "oi_image_record",
    "summarize_oi_records",
]

OI_EVALUATOR_TYPE = "sgg_oi"  # a dataset's metadata evaluator_type for which SceneGraphEvaluator adds these metrics
OI_METRICS = ("oi-R@50", "mAP_rel", "wmAP_rel", "mAP_phr", "wmAP_phr", "score_wtd")


class OIImageRecord(NamedTuple):
    """What the Open Images metrics need from one image (R gt relations, D detections).

    triplets: int64 [R, 3] gt (subject label, object label, predicate); rank: int64 [R] position of the first
    detection hitting each gt triplet (``top_k`` when none). det_predicates: int64 [D]; det_scores: float64 [D];
    rel_overlap / phr_overlap: float64 [D] best overlap with a gt of the same predicate and labels (0 when none);
    rel_gt / phr_gt: int64 [D] that gt's row in the image.
    """

    key: int
    triplets: np.ndarray
    rank: np.ndarray
    det_predicates: np.ndarray
    det_scores: np.ndarray
    rel_overlap: np.ndarray
    rel_gt: np.ndarray
    phr_overlap: np.ndarray
    phr_gt: np.ndarray


def oi_detections(rel_scores: np.ndarray, pair_scores: np.ndarray, top_k: int = 100, predicates_per_pair: int = 2,
                  min_score: float = 1e-5):
    """(pairs [D], predicates [D] in 1..P-1, scores [D] float64) of the image's top detections, best first.

    Each pair proposes its ``predicates_per_pair`` highest foreground predicates (ties: lower id first); candidates
    are ranked (pair, rank) row-major with ties kept in that order, cut at ``top_k`` and at scores > ``min_score``.
    """
    fg = rel_scores[:, 1:]
    k = min(predicates_per_pair, fg.shape[1])
    if fg.shape[0] == 0 or k <= 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    order = np.argsort(-fg, axis=1, kind="stable")[:, :k]  # [M, k]
    candidate_scores = np.take_along_axis(fg, order, axis=1).astype(np.float64) * pair_scores[:, None]
    if np.isnan(candidate_scores).any():
        raise ValueError("NaN in 'rel_scores' or object 'scores'")
    top = stable_topk_desc(candidate_scores.ravel(), top_k)
    top = top[candidate_scores.ravel()[top] > min_score]
    return top // k, order.ravel()[top] + 1, candidate_scores.ravel()[top]


def _union_boxes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.concatenate([np.minimum(a[:, :2], b[:, :2]), np.maximum(a[:, 2:], b[:, 2:])], axis=1)


def _best_gt(overlap: np.ndarray, valid: np.ndarray):
    """Per detection (row): the best overlap among valid gt columns (0 when none) and its column (first on ties)."""
    masked = np.where(valid, overlap, 0.0)
    if masked.shape[1] == 0:
        return np.zeros(masked.shape[0]), np.full(masked.shape[0], -1, dtype=np.int64)
    return masked.max(axis=1), masked.argmax(axis=1).astype(np.int64)


def oi_image_record(gt: dict, pred: dict, mode: str, top_k: int = 100, predicates_per_pair: int = 2,
                    min_score: float = 1e-5, iou_thresh: float = 0.5, legacy_iou: bool = False,
                    key: int = 0) -> OIImageRecord:
    """The :class:`OIImageRecord` of one image (gt and prediction formats of
    :func:`kern_d2.evaluation.sgg_metrics.image_hits`)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    where = f"image {gt.get('image_id', key)}"
    gt_boxes, gt_labels, gt_rels, triplets = gt_arrays(gt, where)
    boxes, labels, scores, rel_pairs, rel_scores = prediction_arrays(gt_boxes, gt_labels, gt_rels, pred, mode, where)
    pair_scores = scores[rel_pairs[:, 0]] * scores[rel_pairs[:, 1]]
    try:
        pairs, predicates, det_scores = oi_detections(rel_scores, pair_scores, top_k, predicates_per_pair, min_score)
    except ValueError as e:
        raise ValueError(f"{where} prediction: {e}") from None

    box_match = pairwise_iou(gt_boxes, boxes, legacy=legacy_iou) >= iou_thresh
    rank = _first_hit_ranks(gt_rels, gt_labels, box_match, rel_pairs, labels, pairs, predicates, top_k)

    subj, obj = boxes[rel_pairs[pairs, 0]], boxes[rel_pairs[pairs, 1]]  # [D, 4]
    gt_subj, gt_obj = gt_boxes[gt_rels[:, 0]], gt_boxes[gt_rels[:, 1]]  # [R, 4]
    valid = predicates[:, None] == triplets[None, :, 2]
    valid &= labels[rel_pairs[pairs, 0]][:, None] == triplets[None, :, 0]
    valid &= labels[rel_pairs[pairs, 1]][:, None] == triplets[None, :, 1]
    rel_overlap = np.minimum(pairwise_iou(subj, gt_subj, legacy_iou), pairwise_iou(obj, gt_obj, legacy_iou))
    phr_overlap = pairwise_iou(_union_boxes(subj, obj), _union_boxes(gt_subj, gt_obj), legacy_iou)
    rel_best, rel_gt = _best_gt(rel_overlap, valid)
    phr_best, phr_gt = _best_gt(phr_overlap, valid)
    return OIImageRecord(key, triplets, rank, predicates, det_scores, rel_best, rel_gt, phr_best, phr_gt)


def average_precision(is_candidate: np.ndarray, gt_ids: np.ndarray, num_gt: int) -> float:
    """Pascal VOC AP (all points) of detections sorted best first.

    is_candidate: bool [D], the detection's best gt overlaps enough; gt_ids: int64 [D], that gt (globally unique).
    A candidate is a true positive when no earlier detection took its gt; every other detection is a false positive.
    """
    tp = np.zeros(len(is_candidate))
    candidates = np.flatnonzero(is_candidate)
    _, first = np.unique(gt_ids[candidates], return_index=True)
    tp[candidates[first]] = 1.0
    tp_sum, fp_sum = np.cumsum(tp), np.cumsum(1.0 - tp)
    recall = tp_sum / (num_gt + 1e-12)
    precision = tp_sum / np.maximum(tp_sum + fp_sum, np.finfo(np.float64).eps)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope
    step = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))


def _concat(records, field: str, dtype) -> np.ndarray:
    parts = [getattr(r, field) for r in records]
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)


def summarize_oi_records(records: Sequence[OIImageRecord], num_predicates: int, iou_thresh: float = 0.5,
                         recall_k: int = 50) -> Dict:
    """Open Images metrics (fractions) over the records of a dataset, in dataset order.

    Returns ``oi-R@50`` (gt triplets hit by an image's top ``recall_k`` detections over all gt triplets), ``mAP_rel``
    / ``mAP_phr`` (mean AP over the ``num_predicates - 1`` predicates, absent ones counting 0), ``wmAP_rel`` /
    ``wmAP_phr`` (AP weighted by each predicate's share of the gt triplets), ``score_wtd``, and ``per_predicate``:
    {"AP_rel" / "AP_phr": {predicate: AP}} over the predicates in the gt.
    """
    if recall_k != 50:
        raise ValueError("the Open Images metrics use R@50 (recall_k=50)")
    triplets = _concat(records, "triplets", np.int64).reshape(-1, 3)
    ranks = _concat(records, "rank", np.int64)
    num_gt = np.bincount(triplets[:, 2], minlength=num_predicates)[:num_predicates]
    gt_offset = np.repeat(np.cumsum([0] + [len(r.triplets) for r in records])[:-1],
                          [len(r.det_scores) for r in records])
    predicates = _concat(records, "det_predicates", np.int64)
    scores = _concat(records, "det_scores", np.float64)
    out = {"oi-R@50": float((ranks < recall_k).sum() / (len(ranks) + 1e-12))}
    per_predicate = {}
    for kind in ("rel", "phr"):
        overlap = _concat(records, f"{kind}_overlap", np.float64)
        gt_ids = _concat(records, f"{kind}_gt", np.int64) + gt_offset
        ap = np.zeros(num_predicates)
        for p in range(1, num_predicates):
            chosen = np.flatnonzero(predicates == p)
            chosen = chosen[np.argsort(-scores[chosen], kind="stable")]
            ap[p] = average_precision(overlap[chosen] > iou_thresh, gt_ids[chosen], int(num_gt[p]))
        out[f"mAP_{kind}"] = float(ap[1:].mean()) if num_predicates > 1 else float("nan")
        out[f"wmAP_{kind}"] = float((ap * num_gt).sum() / max(num_gt.sum(), 1))
        per_predicate[f"AP_{kind}"] = {int(p): float(ap[p]) for p in np.flatnonzero(num_gt)}
    out["score_wtd"] = 0.2 * out["oi-R@50"] + 0.4 * out["wmAP_rel"] + 0.4 * out["wmAP_phr"]
    result = {name: out[name] for name in OI_METRICS}
    result["per_predicate"] = per_predicate
    return result


class OIMetricAccumulator:
    """Incremental Open Images metrics: ``add(gt, pred)`` per image, then ``summarize()`` (records combine across
    processes with :func:`kern_d2.evaluation.sgg_metrics.merge_image_hits`)."""

    def __init__(self, mode: str, num_predicates: int, iou_thresh: float = 0.5, legacy_iou: bool = False,
                 top_k: int = 100, predicates_per_pair: int = 2, min_score: float = 1e-5):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.num_predicates = int(num_predicates)
        self.iou_thresh = float(iou_thresh)
        self.legacy_iou = bool(legacy_iou)
        self.top_k, self.predicates_per_pair, self.min_score = int(top_k), int(predicates_per_pair), float(min_score)
        self.records: List[OIImageRecord] = []

    def add(self, gt: dict, pred: dict, key: Optional[int] = None) -> OIImageRecord:
        record = oi_image_record(gt, pred, self.mode, self.top_k, self.predicates_per_pair, self.min_score,
                                 self.iou_thresh, self.legacy_iou, key=len(self.records) if key is None else int(key))
        self.records.append(record)
        return record

    def summarize(self, records: Optional[Sequence[OIImageRecord]] = None) -> Dict:
        return summarize_oi_records(self.records if records is None else records, self.num_predicates,
                                    self.iou_thresh)
