"""Scene graph recall metrics: R@K, ng-R@K, mR@K, ng-mR@K, zR@K and ng-zR@K (definitions in README.md, "Metrics").

Per image, :func:`image_hits` ranks the predicted triplets (graph constraint: one predicate per pair; no graph
constraint "ng": every pair x predicate) and records, for each gt triplet, the rank of the first top-K prediction
that hits it. That record is a few integers per gt triplet, so :class:`SGGMetricAccumulator` keeps memory bounded
and records from several processes combine exactly (:func:`merge_image_hits`); :func:`summarize_image_hits` turns
them into the metrics. Everything inside an image is vectorised with numpy; the only Python loop is over images.
"""
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence

import numpy as np

__all__ = [
    "MODES",
    "ImageHits",
    "SGGMetricAccumulator",
    "compute_sgg_metrics",
    "gt_arrays",
    "gt_predicate_counts",
    "image_hits",
    "merge_image_hits",
    "pairwise_iou",
    "prediction_arrays",
    "stable_topk_desc",
    "summarize_image_hits",
    "triplet_keys",
    "triplet_array",
]

MODES = ("predcls", "sgcls", "sgdet")
# Triplets (subject label, object label, predicate) are packed into one int64 for set tests: 21 bits each.
_KEY_BITS = 21


class ImageHits(NamedTuple):
    """What the metrics need from one image.

    key: int, orders images when records from several processes are merged (dataset position or input order).
    triplets: int64 [R, 3] gt (subject label, object label, predicate), one row per gt relation row.
    rank_gc / rank_ng: int64 [R], 0-based rank of the first prediction that hits the gt triplet in the ranking
        with / without graph constraint; ``max_k`` when none of the top ``max_k`` does.
    """

    key: int
    triplets: np.ndarray
    rank_gc: np.ndarray
    rank_ng: np.ndarray


def pairwise_iou(boxes1: np.ndarray, boxes2: np.ndarray, legacy: bool = False) -> np.ndarray:
    """IoU of XYXY boxes [N,4] x [M,4] -> float64 [N,M], as Detectron2's ``pairwise_iou`` (0 where boxes do not
    intersect). ``legacy``: widths and heights are ``x2 - x1 + 1`` (the original SGG evaluation's pixel
    convention)."""
    b1 = np.asarray(boxes1, dtype=np.float64).reshape(-1, 4)
    b2 = np.asarray(boxes2, dtype=np.float64).reshape(-1, 4)
    one = 1.0 if legacy else 0.0
    area1 = (b1[:, 2] - b1[:, 0] + one) * (b1[:, 3] - b1[:, 1] + one)
    area2 = (b2[:, 2] - b2[:, 0] + one) * (b2[:, 3] - b2[:, 1] + one)
    width = np.minimum(b1[:, None, 2], b2[None, :, 2]) - np.maximum(b1[:, None, 0], b2[None, :, 0]) + one
    height = np.minimum(b1[:, None, 3], b2[None, :, 3]) - np.maximum(b1[:, None, 1], b2[None, :, 1]) + one
    inter = np.clip(width, 0, None) * np.clip(height, 0, None)
    union = area1[:, None] + area2[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(inter > 0, inter / union, 0.0)


def stable_topk_desc(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the first ``k`` entries of ``np.argsort(-scores, kind="stable")`` (descending; ties keep input
    order), in O(n) when ``n`` is much larger than ``k``: everything above the k-th largest value, then the
    earliest entries equal to it."""
    n = scores.shape[0]
    if n <= 4 * k:
        return np.argsort(-scores, kind="stable")[:k]
    kth = np.partition(scores, n - k)[n - k]
    above = np.flatnonzero(scores > kth)
    equal = np.flatnonzero(scores == kth)[: k - above.size]
    chosen = np.sort(np.concatenate([above, equal]))
    return chosen[np.argsort(-scores[chosen], kind="stable")]


def triplet_keys(triplets: np.ndarray) -> np.ndarray:
    """Pack (subject label, object label, predicate) rows [R,3] into int64 [R] (each value must be in [0, 2^21))."""
    triplets = np.asarray(triplets, dtype=np.int64).reshape(-1, 3)
    if triplets.size and (triplets.min() < 0 or triplets.max() >= (1 << _KEY_BITS)):
        raise ValueError(f"triplet labels and predicates must be in [0, {1 << _KEY_BITS}), "
                         f"got {triplets.min()}..{triplets.max()}")
    return (triplets[:, 0] << (2 * _KEY_BITS)) | (triplets[:, 1] << _KEY_BITS) | triplets[:, 2]


def triplet_array(triplets) -> np.ndarray:
    """A set / list / array of (subject label, object label, predicate) as int64 [Z, 3], checked."""
    if isinstance(triplets, (set, frozenset)):
        triplets = sorted(triplets)
    triplets = np.asarray(triplets, dtype=np.int64).reshape(-1, 3)
    triplet_keys(triplets)  # range check
    return triplets


def _field(d: dict, name: str, what: str, dtype, shape) -> np.ndarray:
    if name not in d:
        raise KeyError(f"{what}: missing key '{name}'")
    value = np.asarray(d[name])
    if value.size == 0:
        return np.zeros((0,) + tuple(s for s in shape[1:] if s != -1), dtype=dtype)
    try:
        return value.astype(dtype, copy=False).reshape(shape)
    except ValueError as e:
        raise ValueError(f"{what}: '{name}' has shape {value.shape}, expected {shape}") from e


def _check_indices(idx: np.ndarray, n: int, what: str, name: str):
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"{what}: '{name}' indices must be in [0, {n}), got [{idx.min()}, {idx.max()}]")


def _objects(gt_boxes, gt_labels, pred: dict, mode: str, where: str):
    """The boxes, labels and scores the predicted pairs index into, per mode."""
    num_gt = gt_boxes.shape[0]
    if mode == "sgdet":
        boxes = _field(pred, "boxes", f"{where} prediction", np.float64, (-1, 4))
        labels = _field(pred, "labels", f"{where} prediction", np.int64, (-1,))
        scores = _field(pred, "scores", f"{where} prediction", np.float64, (-1,))
        if not boxes.shape[0] == labels.shape[0] == scores.shape[0]:
            raise ValueError(f"{where} prediction: boxes {boxes.shape[0]}, labels {labels.shape[0]} and scores "
                             f"{scores.shape[0]} differ in length")
        return boxes, labels, scores
    if "boxes" in pred and np.asarray(pred["boxes"]).reshape(-1, 4).shape[0] != num_gt:
        raise ValueError(f"{where}: in {mode} the predicted boxes must be the {num_gt} gt boxes (index-aligned), "
                         f"got {np.asarray(pred['boxes']).reshape(-1, 4).shape[0]} boxes")
    if mode == "predcls":
        return gt_boxes, gt_labels, np.ones(num_gt)
    labels = _field(pred, "labels", f"{where} prediction", np.int64, (-1,))
    scores = _field(pred, "scores", f"{where} prediction", np.float64, (-1,))
    if labels.shape[0] != num_gt or scores.shape[0] != num_gt:
        raise ValueError(f"{where}: in sgcls predicted labels/scores must be index-aligned with the {num_gt} gt "
                         f"boxes, got {labels.shape[0]} labels and {scores.shape[0]} scores")
    return gt_boxes, labels, scores


def _rankings(rel_scores: np.ndarray, pair_scores: np.ndarray, max_k: int, where: str):
    """Top ``max_k`` (pair, predicate) candidates with and without graph constraint.

    rel_scores: float32/float64 [M,P] (column 0 = no relation); pair_scores: float64 [M], subject x object score.
    Triplet scores are float64 products; the [M,P] array is never converted or multiplied as a whole.
    Returns (gc_pairs, gc_predicates, ng_pairs, ng_predicates), each int64 [<= max_k], best first.
    """
    num_pairs, num_fg = rel_scores.shape[0], rel_scores.shape[1] - 1
    if num_pairs == 0 or num_fg <= 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, empty
    fg_scores = rel_scores[:, 1:]
    gc_scores = fg_scores.max(axis=1).astype(np.float64) * pair_scores
    if np.isnan(gc_scores).any():  # max() propagates NaN, so this catches NaN in any predicate or object score
        raise ValueError(f"{where} prediction: NaN in 'rel_scores' or object 'scores'")
    gc_top = stable_topk_desc(gc_scores, max_k)
    gc_predicates = fg_scores[gc_top].argmax(axis=1) + 1  # first maximum: ties go to the lowest predicate

    # Without constraint, candidates are (pair, predicate) in row-major order. Each constrained score is also an
    # unconstrained one, so the k-th best constrained score is a lower bound of the k-th best unconstrained one:
    # only candidates scoring at least that can be in the top k. With non-negative pair scores that is a per-pair
    # threshold on the stored predicate scores, lowered a little so rounding never drops a candidate; the exact
    # float64 products are then formed for the few candidates only, which keep their row-major order.
    bound = gc_scores[gc_top[-1]]
    if gc_top.size == max_k and bound > 0 and pair_scores.min() >= 0:
        with np.errstate(divide="ignore", over="ignore"):  # pair score 0 or a threshold beyond float32: inf
            threshold = (bound / pair_scores) * (1.0 - 1e-9)
            threshold = np.nextafter(threshold.astype(fg_scores.dtype), -np.inf)
        candidates = np.flatnonzero(fg_scores >= threshold[:, None])
    else:
        candidates = np.arange(num_pairs * num_fg)
    pairs, predicates = candidates // num_fg, candidates % num_fg
    scores = fg_scores[pairs, predicates].astype(np.float64) * pair_scores[pairs]
    ng_top = stable_topk_desc(scores, max_k)
    return gc_top, gc_predicates, pairs[ng_top], predicates[ng_top] + 1


def _first_hit_ranks(gt_rels, gt_labels, box_match, rel_pairs, labels, cand_pairs, cand_predicates, max_k):
    """Rank of the first candidate hitting each gt triplet, ``max_k`` if none: int64 [R].

    box_match: bool [G, N], gt box g and predicted box n have IoU >= threshold.
    """
    if cand_pairs.size == 0:
        return np.full(gt_rels.shape[0], max_k, dtype=np.int64)
    subj, obj = rel_pairs[cand_pairs, 0], rel_pairs[cand_pairs, 1]  # [K]
    gs, go = gt_rels[:, 0:1], gt_rels[:, 1:2]  # [R,1]
    hit = gt_rels[:, 2:3] == cand_predicates[None, :]
    hit &= gt_labels[gs] == labels[subj][None, :]
    hit &= gt_labels[go] == labels[obj][None, :]
    hit &= box_match[gs, subj[None, :]]
    hit &= box_match[go, obj[None, :]]
    return np.where(hit.any(axis=1), hit.argmax(axis=1), max_k).astype(np.int64)


def gt_arrays(gt: dict, where: str):
    """(boxes [G,4], labels [G], relations [R,3], triplets [R,3]) of one image's gt, checked (format in
    :func:`image_hits`); triplets are (subject label, object label, predicate)."""
    gt_boxes = _field(gt, "boxes", f"{where} gt", np.float64, (-1, 4))
    gt_labels = _field(gt, "labels", f"{where} gt", np.int64, (-1,))
    gt_rels = _field(gt, "relations", f"{where} gt", np.int64, (-1, 3))
    if gt_labels.shape[0] != gt_boxes.shape[0]:
        raise ValueError(f"{where} gt: {gt_boxes.shape[0]} boxes but {gt_labels.shape[0]} labels")
    _check_indices(gt_rels[:, :2], gt_boxes.shape[0], f"{where} gt", "relations")
    if gt_rels.size and gt_rels[:, 2].min() < 1:
        raise ValueError(f"{where} gt: relation predicates must be >= 1 (0 means no relation)")
    triplets = np.stack([gt_labels[gt_rels[:, 0]], gt_labels[gt_rels[:, 1]], gt_rels[:, 2]], axis=1)
    return gt_boxes, gt_labels, gt_rels, triplets


def prediction_arrays(gt_boxes, gt_labels, gt_rels, pred: dict, mode: str, where: str):
    """(boxes [N,4], labels [N], scores [N], rel_pairs [M,2], rel_scores [M,P]) that one image's predicted pairs
    index into, checked against the gt (format in :func:`image_hits`; predcls / sgcls use the gt boxes)."""
    boxes, labels, scores = _objects(gt_boxes, gt_labels, pred, mode, where)
    rel_pairs = _field(pred, "rel_pairs", f"{where} prediction", np.int64, (-1, 2))
    if "rel_scores" not in pred:
        raise KeyError(f"{where} prediction: missing key 'rel_scores'")
    rel_scores = np.asarray(pred["rel_scores"])
    if rel_scores.dtype not in (np.float32, np.float64):  # kept as given otherwise: no copy of [M,P]
        rel_scores = rel_scores.astype(np.float64)
    if rel_scores.size == 0 and rel_pairs.shape[0] == 0:
        rel_scores = rel_scores.reshape(0, rel_scores.shape[-1] if rel_scores.ndim == 2 else 0)
    if rel_scores.ndim != 2 or rel_scores.shape[0] != rel_pairs.shape[0]:
        raise ValueError(f"{where} prediction: 'rel_scores' must be [M, P] with M = {rel_pairs.shape[0]} pairs, "
                         f"got {rel_scores.shape}")
    if rel_pairs.shape[0] and gt_rels.size and gt_rels[:, 2].max() >= rel_scores.shape[1]:
        raise ValueError(f"{where}: gt predicate {gt_rels[:, 2].max()} has no column in 'rel_scores' "
                         f"({rel_scores.shape[1]} predicates incl. no-relation)")
    _check_indices(rel_pairs, boxes.shape[0], f"{where} prediction", "rel_pairs")
    return boxes, labels, scores, rel_pairs, rel_scores


def image_hits(gt: dict, pred: dict, mode: str, max_k: int = 100, iou_thresh: float = 0.5,
               legacy_iou: bool = False, key: int = 0) -> ImageHits:
    """Rank one image's predictions and find, per gt triplet, its first hit (see :class:`ImageHits`).

    gt: ``boxes`` [G,4] XYXY, ``labels`` [G], ``relations`` [R,3] (subject, object, predicate >= 1).
    pred: ``boxes`` [N,4], ``labels`` [N], ``scores`` [N], ``rel_pairs`` [M,2], ``rel_scores`` [M,P].
    Triplet score = predicate score x (subject score x object score), in float64.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    where = f"image {gt.get('image_id', key)}"
    gt_boxes, gt_labels, gt_rels, triplets = gt_arrays(gt, where)
    if gt_rels.shape[0] == 0:
        none = np.zeros(0, dtype=np.int64)
        return ImageHits(key, triplets, none, none)

    boxes, labels, scores, rel_pairs, rel_scores = prediction_arrays(gt_boxes, gt_labels, gt_rels, pred, mode, where)
    pair_scores = scores[rel_pairs[:, 0]] * scores[rel_pairs[:, 1]]
    gc_pairs, gc_preds, ng_pairs, ng_preds = _rankings(rel_scores, pair_scores, max_k, where)
    box_match = pairwise_iou(gt_boxes, boxes, legacy=legacy_iou) >= iou_thresh
    rank_gc = _first_hit_ranks(gt_rels, gt_labels, box_match, rel_pairs, labels, gc_pairs, gc_preds, max_k)
    rank_ng = _first_hit_ranks(gt_rels, gt_labels, box_match, rel_pairs, labels, ng_pairs, ng_preds, max_k)
    return ImageHits(key, triplets, rank_gc, rank_ng)


def merge_image_hits(parts: Iterable[Iterable[ImageHits]]) -> List[ImageHits]:
    """Combine records from several processes into one list ordered by ``key`` (one record per key), so that
    results do not depend on how images were split across processes."""
    by_key = {}
    for part in parts:
        for record in part:
            by_key.setdefault(int(record.key), record)
    return [by_key[k] for k in sorted(by_key)]


def gt_predicate_counts(records: Sequence[ImageHits]) -> Dict[int, int]:
    """Number of gt triplets (relation rows) per predicate over ``records``, by predicate id."""
    predicates = np.concatenate([r.triplets[:, 2] for r in records]) if records else np.zeros(0, np.int64)
    ids, counts = np.unique(predicates, return_counts=True)
    return {int(i): int(c) for i, c in zip(ids, counts)}


def _mean_of_groups(values: np.ndarray, groups: np.ndarray, num_groups: int):
    """Per group mean of ``values`` and the group sizes (mean is NaN for empty groups)."""
    counts = np.bincount(groups, minlength=num_groups)
    sums = np.bincount(groups, weights=values, minlength=num_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts, counts


def _mean_or_nan(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


def summarize_image_hits(records: Sequence[ImageHits], ks: Sequence[int] = (20, 50, 100),
                         zero_shot_triplets=None) -> Dict:
    """Metrics from per-image records (fractions in [0, 1]; NaN when no image qualifies).

    Returns ``R@K``, ``ng-R@K``, ``mR@K``, ``ng-mR@K``, ``zR@K`` and ``ng-zR@K`` (the last two only with
    ``zero_shot_triplets``), and ``per_predicate``: {"R@K" / "ng-R@K": {predicate: recall}} over the predicates
    that occur in the gt.
    """
    ks = [int(k) for k in ks]
    records = [r for r in records if r.triplets.shape[0] > 0]  # images without gt relations are skipped
    counts = np.array([r.triplets.shape[0] for r in records], dtype=np.int64)
    image = np.repeat(np.arange(len(records)), counts)
    triplets = np.concatenate([r.triplets for r in records]) if records else np.zeros((0, 3), np.int64)
    ranks = {
        "": np.concatenate([r.rank_gc for r in records]) if records else np.zeros(0, np.int64),
        "ng-": np.concatenate([r.rank_ng for r in records]) if records else np.zeros(0, np.int64),
    }
    predicate = triplets[:, 2]
    num_predicates = int(predicate.max()) + 1 if predicate.size else 1
    # Groups (image, predicate) for the per-predicate recall, and the predicates they belong to.
    group_keys, group = np.unique(image * num_predicates + predicate, return_inverse=True)
    group_predicate = group_keys % num_predicates
    present = np.unique(predicate)
    if zero_shot_triplets is not None:
        is_zero_shot = np.isin(triplet_keys(triplets), triplet_keys(triplet_array(zero_shot_triplets)))
        zs_images, zs_image = np.unique(image[is_zero_shot], return_inverse=True)

    out = {}
    per_predicate = {}
    for prefix, rank in ranks.items():
        for k in ks:
            hit = (rank < k).astype(np.float64)
            per_image, _ = _mean_of_groups(hit, image, len(records))
            out[f"{prefix}R@{k}"] = _mean_or_nan(per_image)
            per_group, _ = _mean_of_groups(hit, group, group_keys.size)
            per_pred, _ = _mean_of_groups(per_group, group_predicate, num_predicates)
            per_predicate[f"{prefix}R@{k}"] = {int(p): float(per_pred[p]) for p in present}
            out[f"{prefix}mR@{k}"] = _mean_or_nan(per_pred[present])
            if zero_shot_triplets is not None:
                per_zs_image, _ = _mean_of_groups(hit[is_zero_shot], zs_image, zs_images.size)
                out[f"{prefix}zR@{k}"] = _mean_or_nan(per_zs_image)
    order = [f"{p}{m}@{k}" for m in ("R", "mR", "zR") for p in ("", "ng-") for k in ks]
    result = {name: out[name] for name in order if name in out}
    result["per_predicate"] = per_predicate
    return result


class SGGMetricAccumulator:
    """Incremental scene graph metrics: ``add(gt, pred)`` per image, then ``summarize()``.

    Keeps only an :class:`ImageHits` per image (a few integers per gt triplet), so memory stays small at dataset
    scale; ``records`` from several accumulators combine with :func:`merge_image_hits`.
    """

    def __init__(self, mode: str, ks: Sequence[int] = (20, 50, 100), iou_thresh: float = 0.5,
                 zero_shot_triplets=None, legacy_iou: bool = False):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        ks = tuple(int(k) for k in ks)
        if not ks or min(ks) < 1:
            raise ValueError(f"ks must be positive integers, got {ks}")
        self.mode = mode
        self.ks = ks
        self.max_k = max(ks)
        self.iou_thresh = float(iou_thresh)
        self.legacy_iou = bool(legacy_iou)
        self.zero_shot_triplets = None if zero_shot_triplets is None else triplet_array(zero_shot_triplets)
        self.records: List[ImageHits] = []

    def add(self, gt: dict, pred: dict, key: Optional[int] = None) -> ImageHits:
        """Evaluate one image (formats in :func:`image_hits`); ``key`` orders images (default: arrival order)."""
        record = image_hits(gt, pred, self.mode, self.max_k, self.iou_thresh, self.legacy_iou,
                            key=len(self.records) if key is None else int(key))
        self.records.append(record)
        return record

    def summarize(self, records: Optional[Sequence[ImageHits]] = None) -> Dict:
        """Metrics over ``records`` (default: this accumulator's own), see :func:`summarize_image_hits`."""
        return summarize_image_hits(self.records if records is None else records, self.ks, self.zero_shot_triplets)


def compute_sgg_metrics(gts: Sequence[dict], preds: Sequence[dict], mode: str, ks: Sequence[int] = (20, 50, 100),
                        iou_thresh: float = 0.5, zero_shot_triplets=None, legacy_iou: bool = False) -> Dict:
    """R@K, ng-R@K, mR@K, ng-mR@K (and zR@K, ng-zR@K with ``zero_shot_triplets``) as fractions, plus
    ``per_predicate`` recalls, over paired lists of gt and prediction dicts (formats in :func:`image_hits`)."""
    if len(gts) != len(preds):
        raise ValueError(f"compute_sgg_metrics: {len(gts)} gt images but {len(preds)} predictions")
    accumulator = SGGMetricAccumulator(mode, ks, iou_thresh, zero_shot_triplets, legacy_iou)
    for gt, pred in zip(gts, preds):
        accumulator.add(gt, pred)
    return accumulator.summarize()
