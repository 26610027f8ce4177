"""An independent float64 NumPy reference of the released KERN SGDet pipeline's post-processing and pair assignment,
written from the structure of the released code (yuweihao/KERN lib/kern_model.py, lib/object_detector.py;
rowanz/neural-motifs lib/fpn/proposal_assignments/rel_assignments.py), with plain loops. No kern_d2 imports.

Conventions as kern_d2's port: classes 0..C-1 foreground, C background (the released code: 0 background, 1..C);
boxes XYXY; the IoU without the released code's +1 pixel unless ``offset=1`` is passed.
"""
import numpy as np


def iou_matrix(a, b, offset=0.0):
    """[len(a), len(b)] IoU, 0 where the boxes do not intersect."""
    a, b = np.asarray(a, dtype=np.float64).reshape(-1, 4), np.asarray(b, dtype=np.float64).reshape(-1, 4)
    out = np.zeros((len(a), len(b)))
    for i in range(len(a)):
        for j in range(len(b)):
            w = min(a[i, 2], b[j, 2]) - max(a[i, 0], b[j, 0]) + offset
            h = min(a[i, 3], b[j, 3]) - max(a[i, 1], b[j, 1]) + offset
            inter = max(w, 0.0) * max(h, 0.0)
            if inter > 0:
                area_a = (a[i, 2] - a[i, 0] + offset) * (a[i, 3] - a[i, 1] + offset)
                area_b = (b[j, 2] - b[j, 0] + offset) * (b[j, 3] - b[j, 1] + offset)
                out[i, j] = inter / (area_a + area_b - inter)
    return out


def greedy_nms(scores, boxes, thresh, pre_top=None, post_top=None, offset=0.0):
    """Indices kept by greedy NMS, best first: sort by descending score (ties: lower index first), keep a box unless
    a kept one overlaps it with IoU > thresh; the first ``pre_top`` boxes enter, the first ``post_top`` kept leave."""
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    if pre_top is not None:
        order = order[:pre_top]
    iou = iou_matrix(boxes[order], boxes[order], offset)
    kept = []
    for k in range(len(order)):
        if all(iou[m, k] <= thresh for m in kept):
            kept.append(k)
    kept = [int(order[k]) for k in kept]
    return kept if post_top is None else kept[:post_top]


def filter_det(scores, boxes, thresh=0.01, max_per_img=64, nms_thresh=0.3, pre_nms_topn=6000, post_nms_topn=300):
    """The released detector's per-image detections (object_detector.filter_det with nms_filter_duplicates).

    scores [R, C+1] probabilities (background last); boxes [R, C, 4] clipped per-class boxes.
    Returns (proposal indices, scores, labels) by descending score.
    """
    num_proposals, num_classes = scores.shape[0], scores.shape[1] - 1
    mask = np.zeros((num_proposals, num_classes))
    for c in range(num_classes):
        if scores[:, c].max() <= thresh:  # only classes some proposal scores above the threshold
            continue
        for i in greedy_nms(scores[:, c], boxes[:, c], nms_thresh, pre_nms_topn, post_nms_topn):
            mask[i, c] = 1
    masked = mask * scores[:, :num_classes]
    best_score, best_label = masked.max(axis=1), masked.argmax(axis=1)
    proposals = [i for i in range(num_proposals) if best_score[i] != 0]
    proposals.sort(key=lambda i: -best_score[i])  # stable: ties keep the lower index first
    proposals = [i for i in proposals if best_score[i] > thresh][:max_per_img]
    return (np.array(proposals, dtype=np.int64), best_score[proposals], best_label[proposals].astype(np.int64))


def object_targets(boxes, gt_boxes, gt_classes, background, fg_thresh=0.5, offset=0.0):
    """Each box's best gt box's class when IoU >= fg_thresh, else background (object_detector, 'refinerels')."""
    out = np.full(len(boxes), background, dtype=np.int64)
    if len(gt_boxes) == 0:
        return out
    iou = iou_matrix(boxes, gt_boxes, offset)
    for i in range(len(boxes)):
        g = int(np.argmax(iou[i]))
        if iou[i, g] >= fg_thresh:
            out[i] = gt_classes[g]
    return out


def rel_assignment_structure(boxes, labels, gt_boxes, gt_classes, gt_rels, background, fg_thresh=0.5, offset=0.0):
    """The deterministic part of rel_assignments (filter_non_overlap=True) for one image.

    Returns (candidates, bg_pool): ``candidates`` per gt relation a dict {(i, j): weight} of its candidate detection
    pairs (weight = IoU(i, s) * IoU(j, o)); ``bg_pool`` the set of pairs background may be drawn from.
    """
    n = len(boxes)
    iou = iou_matrix(boxes, gt_boxes, offset) if len(gt_boxes) else np.zeros((n, 0))
    is_match = (np.asarray(labels)[:, None] == np.asarray(gt_classes)[None, :]) & (iou >= fg_thresh)
    det_iou = iou_matrix(boxes, boxes, offset)
    possible = (det_iou < 1) & (det_iou > 0)
    for i in range(n):
        if labels[i] == background:
            possible[i, :] = False
            possible[:, i] = False
    candidates = []
    for s, o, _ in gt_rels:
        cands = {}
        for i in np.where(is_match[:, s])[0]:
            for j in np.where(is_match[:, o])[0]:
                if i != j:
                    cands[(int(i), int(j))] = iou[i, s] * iou[j, o]
                    possible[i, j] = False
        candidates.append(cands)
    bg_pool = {(int(i), int(j)) for i, j in zip(*np.where(possible))}
    return candidates, bg_pool


def rel_assignments(boxes, labels, gt_boxes, gt_classes, gt_rels, background, rng, fg_thresh=0.5, pairs=64,
                    fg_pairs=16, offset=0.0):
    """rel_assignments with num_sample_per_gt=1, filter_non_overlap=True, drawing with ``rng``: rows (i, j, p)
    sorted by (i, j)."""
    candidates, bg_pool = rel_assignment_structure(boxes, labels, gt_boxes, gt_classes, gt_rels, background,
                                                   fg_thresh, offset)
    fg = []
    for (_, _, predicate), cands in zip(gt_rels, candidates):
        if not cands:
            continue
        keys = list(cands)
        p = np.array([cands[k] for k in keys])
        i, j = keys[rng.choice(len(keys), p=p / p.sum())]
        fg.append((i, j, int(predicate)))
    if len(fg) > fg_pairs:
        fg = [fg[k] for k in rng.choice(len(fg), size=fg_pairs, replace=False)]
    pool = sorted(bg_pool)
    num_bg = min(pairs - len(fg), len(pool))
    bg = [(i, j, 0) for i, j in (pool[k] for k in rng.choice(len(pool), size=num_bg, replace=False))] if pool else []
    rows = fg + bg
    if not rows:
        rows = [(0, 0, 0)]
    return sorted(rows, key=lambda r: (r[0], r[1]))


def relabel(probs, boxes_per_cls, nms_thresh=0.3):
    """Test-time labels of one image's detections (GGNNRelReason, sgdet, not training) and their scores and boxes
    (KERN.forward's end): per foreground class an NMS over all detections on that class's probability and box; label
    = argmax over foreground of mask * probs (first on ties), score = the unmasked probability, box = that class's.

    probs [n, C+1] (background last); boxes_per_cls [n, C, 4].
    """
    n, num_classes = boxes_per_cls.shape[0], boxes_per_cls.shape[1]
    mask = np.zeros((n, num_classes))
    for c in range(num_classes):
        for i in greedy_nms(probs[:, c], boxes_per_cls[:, c], nms_thresh):
            mask[i, c] = 1
    labels = np.zeros(n, dtype=np.int64)
    for i in range(n):
        best = -1.0
        for c in range(num_classes):
            value = mask[i, c] * probs[i, c]
            if value > best:
                best, labels[i] = value, c
    scores = np.array([probs[i, labels[i]] for i in range(n)], dtype=np.float64)
    boxes = np.array([boxes_per_cls[i, labels[i]] for i in range(n)], dtype=np.float64).reshape(n, 4)
    return labels, scores, boxes
