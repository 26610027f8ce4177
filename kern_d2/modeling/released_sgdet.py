"""The SGDet pipeline of KERN's released code (yuweihao/KERN, built on rowanz/neural-motifs), as pure functions
(``MODEL.ROI_RELATION_HEAD.SGDET_PIPELINE: "released"``; wired into :class:`KERNROIHeads`).

What the released code does, and what each function here reproduces:

- Detection (train and test alike): the detector's class probabilities over the proposals, per-class regressed boxes
  (clipped), per-class NMS at 0.3 on the candidates scoring above 0.01 (at most 300 kept per class), then *one
  detection per proposal*: its best class among those where it survived; the 64 best of these per image. The
  relation part then works on the **proposal boxes** of these detections (object features, union features, pair
  overlap, gt matching); the regressed per-class boxes are kept for the test-time re-labelling
  (:func:`released_detections`).
- Object targets (training): each detection gets the class of its best-overlapping gt box when their IoU >= 0.5,
  else background; the object loss includes the background targets (:func:`released_object_targets`).
- Training pairs (neural-motifs' ``rel_assignments`` with one sample per gt relation): at most 64 pairs per image,
  at most 16 foreground. A detection pair is a candidate of gt relation (s, o, p) when the subject matches gt box s
  (same assigned class, IoU >= 0.5), the object likewise o, and they differ; each gt relation with candidates
  contributes one of them, drawn with probability proportional to IoU(subject, s) x IoU(object, o); no candidate
  pair of any gt relation is background. Background pairs: pairs of two foreground-labelled detections whose boxes
  overlap without being identical (0 < IoU < 1) (:func:`released_relation_assignments`).
- Test: per-class NMS at 0.3 over all detections of an image on the routed class probabilities with each class's
  regressed box; each detection's label is the argmax over the foreground classes of (kept mask x probability), its
  score that class's (unmasked) probability, its box that class's regressed box (:func:`released_relabel`).

Boxes are XYXY with Detectron2's IoU (no +1 pixel: the released code's IoU and NMS count w = x2 - x1 + 1).
Classes follow Detectron2: foreground 0..C-1, background C (the released code's background is 0).
"""
from typing import List, Tuple

import torch

from detectron2.structures import Boxes, Instances, pairwise_iou

from ..layers.nms import batched_nms_topk

__all__ = [
    "RELEASED_SCORE_THRESH",
    "RELEASED_PER_CLASS_MAX",
    "RELEASED_PAIRS_PER_IMAGE",
    "RELEASED_FG_PAIRS_PER_IMAGE",
    "released_detections",
    "released_object_targets",
    "released_relation_assignments",
    "per_class_nms_mask",
    "released_relabel",
]

# The released code's constants (KERN(thresh=0.01), filter_det's post_nms_topn, neural-motifs' RELS_PER_IMG_REFINE
# and round(REL_FG_FRACTION * 64)).
RELEASED_SCORE_THRESH = 0.01
RELEASED_PER_CLASS_MAX = 300
RELEASED_PAIRS_PER_IMAGE = 64
RELEASED_FG_PAIRS_PER_IMAGE = 16


# ------------------------------------------------------------------------------------------------ detection
def released_detections(
    boxes: List[torch.Tensor],
    scores: List[torch.Tensor],
    proposal_boxes: List[Boxes],
    image_shapes: List[Tuple[int, int]],
    score_thresh: float = RELEASED_SCORE_THRESH,
    nms_thresh: float = 0.3,
    max_detections: int = 64,
    per_class_max: int = RELEASED_PER_CLASS_MAX,
) -> List[Instances]:
    """The released detector's SGDet detections: one per proposal, at most ``max_detections`` per image.

    Per image: the per-class boxes are clipped to the image; every (proposal, class) candidate whose probability is
    above ``score_thresh`` enters a per-class NMS at ``nms_thresh`` (at most ``per_class_max`` kept per class, best
    first); each proposal keeps its best surviving class; the ``max_detections`` best proposals are the detections,
    by descending score. (The released code runs NMS over all proposals of a class and thresholds afterwards: a box
    below the threshold can only suppress lower-scoring boxes, which are below it too, so the result is the same.)

    Args:
        boxes: per image [R, C*4], the detector's regressed box of each proposal for each foreground class.
        scores: per image [R, C+1], class probabilities (background last).
        proposal_boxes: per image ``Boxes`` [R], the proposals.
        image_shapes: per image (height, width).
    Returns:
        per image ``Instances`` with n <= max_detections rows, by descending score: ``pred_boxes`` (``Boxes`` [n],
        the *proposal* boxes: the boxes of the relation part), ``boxes_per_cls`` [n, C, 4] (the clipped regressed
        boxes), ``scores`` [n], ``pred_classes`` int64 [n] (the detector's class) and ``proposal_index`` int64 [n].
        Costs one device sync per image (the candidate count) besides the NMS op's own.
    """
    results = []
    for image_boxes, image_scores, proposals, shape in zip(boxes, scores, proposal_boxes, image_shapes):
        num_proposals, num_classes = image_scores.shape[0], image_scores.shape[1] - 1
        height, width = shape
        per_cls = image_boxes.reshape(num_proposals, num_classes, 2, 2)  # (x1, y1), (x2, y2); clipped as Boxes.clip
        per_cls = torch.stack([per_cls[..., 0].clamp(min=0, max=width), per_cls[..., 1].clamp(min=0, max=height)], -1)
        per_cls = per_cls.reshape(num_proposals, num_classes, 4)
        fg_scores = image_scores[:, :num_classes]
        proposal, label = (fg_scores > score_thresh).nonzero(as_tuple=True)
        cand_scores = fg_scores[proposal, label]
        kept = batched_nms_topk(per_cls[proposal, label], cand_scores, label, nms_thresh, cand_scores.numel())
        proposal, label, cand_scores = proposal[kept], label[kept], cand_scores[kept]  # by descending score
        position = torch.arange(kept.numel(), device=kept.device)
        # Rank of each kept candidate within its class (a stable sort by class keeps the score order inside it).
        by_class = torch.argsort(label, stable=True)
        sorted_labels = label[by_class]
        rank = torch.empty_like(position)
        rank[by_class] = position - torch.searchsorted(sorted_labels, sorted_labels)
        capped = rank < per_class_max
        # One detection per proposal: its first (best-scoring) surviving candidate.
        first = torch.full((num_proposals,), kept.numel(), dtype=position.dtype, device=position.device)
        first = first.scatter_reduce(
            0, proposal, torch.where(capped, position, torch.full_like(position, kept.numel())), reduce="amin"
        )
        best = (capped & (first[proposal] == position)).nonzero().squeeze(1)[:max_detections]
        result = Instances(shape)
        result.pred_boxes = Boxes(proposals.tensor[proposal[best]])
        result.boxes_per_cls = per_cls[proposal[best]]
        result.scores = cand_scores[best]
        result.pred_classes = label[best]
        result.proposal_index = proposal[best]
        results.append(result)
    return results


# ------------------------------------------------------------------------------------------------ training targets
def released_object_targets(
    boxes: Boxes, gt_boxes: Boxes, gt_classes: torch.Tensor, background: int, iou_threshold: float = 0.5
) -> torch.Tensor:
    """int64 [N]: the class of each box's best-overlapping gt box when their IoU >= ``iou_threshold``, else
    ``background`` (C). boxes [N], gt_boxes [G], gt_classes int64 [G]."""
    if len(gt_boxes) == 0 or len(boxes) == 0:
        return torch.full((len(boxes),), background, dtype=torch.int64, device=gt_classes.device)
    best_iou, best_gt = pairwise_iou(boxes, gt_boxes).max(dim=1)
    return torch.where(best_iou >= iou_threshold, gt_classes[best_gt], torch.full_like(best_gt, background))


def released_relation_assignments(
    boxes: Boxes,
    labels: torch.Tensor,
    gt_boxes: Boxes,
    gt_classes: torch.Tensor,
    gt_relations: torch.Tensor,
    background: int,
    iou_threshold: float = 0.5,
    pairs_per_image: int = RELEASED_PAIRS_PER_IMAGE,
    fg_per_image: int = RELEASED_FG_PAIRS_PER_IMAGE,
    generator: torch.Generator = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The training pairs of one image and their predicate targets, as the released code assigns them.

    Args:
        boxes: ``Boxes`` [N], the detections (the boxes of the relation part).
        labels: int64 [N], their assigned classes (:func:`released_object_targets`; ``background`` = unmatched).
        gt_boxes: ``Boxes`` [G]; gt_classes: int64 [G]; gt_relations: int64 [R, 3] (subject, object, predicate).
        background: the background class index (C).
        generator: optional ``torch.Generator`` (on the device of ``labels``) for the random draws.
    Returns:
        (pairs int64 [S, 2], predicates int64 [S]) sorted by (subject, object), S <= ``pairs_per_image``: one pair
        drawn per gt relation that has candidates (probability proportional to the product of the two IoUs; at most
        ``fg_per_image`` of them, a uniform subset), then background pairs (predicate 0) drawn uniformly from the
        overlapping (0 < IoU < 1) ordered pairs of foreground-labelled detections that are no candidate of any gt
        relation, up to ``pairs_per_image`` in all. Two gt relations may draw the same pair (two rows). When there is
        nothing at all (and N >= 1), the released code's placeholder: pair (0, 0), predicate 0.
        Vectorised over pairs ([R, N, N] candidate tensors); one device sync (the two counts).
    """
    device = labels.device
    n = len(boxes)
    if n == 0:
        return torch.zeros((0, 2), dtype=torch.int64, device=device), torch.zeros(0, dtype=torch.int64, device=device)
    foreground = labels != background
    det_iou = pairwise_iou(boxes, boxes)
    possible = (det_iou > 0) & (det_iou < 1) & foreground[:, None] & foreground[None, :]

    num_rel = gt_relations.shape[0] if len(gt_boxes) else 0
    if num_rel:
        iou = pairwise_iou(boxes, gt_boxes)  # [N, G]
        match = (labels[:, None] == gt_classes[None, :]) & (iou >= iou_threshold)
        weight = torch.where(match, iou, torch.zeros_like(iou))
        subj_w, obj_w = weight[:, gt_relations[:, 0]].t(), weight[:, gt_relations[:, 1]].t()  # [R, N]
        not_self = ~torch.eye(n, dtype=torch.bool, device=device)
        cand = match[:, gt_relations[:, 0]].t()[:, :, None] & match[:, gt_relations[:, 1]].t()[:, None, :] & not_self
        pair_w = subj_w[:, :, None] * obj_w[:, None, :]  # [R, N, N]
        possible &= ~cand.any(dim=0)
        # One candidate per relation with probability proportional to its weight: the largest log(u) / w (u uniform)
        # wins (exponential race).
        u = torch.rand(cand.shape, generator=generator, device=device, dtype=pair_w.dtype)
        keys = u.clamp_min(torch.finfo(u.dtype).tiny).log() / pair_w.clamp_min(torch.finfo(u.dtype).tiny)
        keys = torch.where(cand, keys, torch.full_like(keys, -float("inf"))).view(num_rel, n * n)
        choice = keys.argmax(dim=1)
        has_candidate = cand.view(num_rel, n * n).any(dim=1)
        fg_pairs = torch.stack([choice // n, choice % n], dim=1)
        fg_predicates = gt_relations[:, 2]
    else:
        has_candidate = torch.zeros(0, dtype=torch.bool, device=device)
        fg_pairs = torch.zeros((0, 2), dtype=torch.int64, device=device)
        fg_predicates = torch.zeros(0, dtype=torch.int64, device=device)

    # Uniform subsets: the valid entries in a random order first.
    fg_key = torch.rand(has_candidate.shape, generator=generator, device=device) + 2.0 * has_candidate
    fg_order = torch.argsort(fg_key, descending=True)
    bg_valid = possible.view(-1)
    bg_key = torch.rand(bg_valid.shape, generator=generator, device=device) + 2.0 * bg_valid
    bg_order = torch.argsort(bg_key, descending=True)
    num_fg = has_candidate.sum().clamp(max=fg_per_image)
    num_bg = torch.minimum(bg_valid.sum(), pairs_per_image - num_fg)
    num_fg, num_bg = torch.stack([num_fg, num_bg]).tolist()

    fg_take, bg_take = fg_order[:num_fg], bg_order[:num_bg]
    pairs = torch.cat([fg_pairs[fg_take], torch.stack([bg_take // n, bg_take % n], dim=1)])
    predicates = torch.cat([fg_predicates[fg_take], torch.zeros(num_bg, dtype=torch.int64, device=device)])
    if pairs.shape[0] == 0:
        pairs = torch.zeros((1, 2), dtype=torch.int64, device=device)
        predicates = torch.zeros(1, dtype=torch.int64, device=device)
    order = torch.argsort(pairs[:, 0] * n + pairs[:, 1], stable=True)
    return pairs[order], predicates[order]


# ------------------------------------------------------------------------------------------------ test time
def _iou_per_class(boxes: torch.Tensor) -> torch.Tensor:
    """[C, n, n] IoU of the n boxes of each class, boxes [C, n, 4] (Detectron2's formula: 0 where they do not
    intersect)."""
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    wh = (torch.minimum(boxes[:, :, None, 2:], boxes[:, None, :, 2:])
          - torch.maximum(boxes[:, :, None, :2], boxes[:, None, :, :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return torch.where(inter > 0, inter / (area[:, :, None] + area[:, None, :] - inter), torch.zeros_like(inter))


def per_class_nms_mask(scores: torch.Tensor, boxes: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """bool [n, C]: whether box (i, c) survives a greedy NMS of class c over all n boxes (IoU > ``iou_threshold``
    suppresses; equal scores: lower index first).

    scores [n, C]; boxes [n, C, 4] (each row's box for each class). All classes at once: one step per rank position
    (n steps of [C, n] operations), no loop over classes or pairs.
    """
    n, num_classes = scores.shape
    if n == 0:
        return torch.zeros((0, num_classes), dtype=torch.bool, device=scores.device)
    order = torch.argsort(scores.t(), dim=1, descending=True, stable=True)  # [C, n]
    sorted_boxes = torch.gather(boxes.transpose(0, 1), 1, order[:, :, None].expand(num_classes, n, 4))
    later = torch.ones(n, n, dtype=torch.bool, device=scores.device).triu(diagonal=1)
    over = (_iou_per_class(sorted_boxes) > iou_threshold) & later  # [C, n, n]: rank k would suppress rank j > k
    suppressed = torch.zeros(num_classes, n, dtype=torch.bool, device=scores.device)
    for k in range(n):  # rank k's fate is final once the ranks before it are done
        suppressed |= over[:, k, :] & ~suppressed[:, k : k + 1]
    mask = torch.zeros_like(suppressed).scatter_(1, order, ~suppressed)
    return mask.t()


def released_relabel(
    probs: torch.Tensor, boxes_per_cls: torch.Tensor, nms_thresh: float = 0.3
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Test-time labels, scores and boxes of one image's detections from the routed class probabilities.

    Args:
        probs: [n, C+1] softmax of the object logits (background last).
        boxes_per_cls: [n, C, 4], each detection's regressed box for each foreground class.
    Returns:
        labels int64 [n] = argmax over foreground c of (per-class NMS mask x probs)[i, c] (first on ties: a detection
        suppressed in every class gets class 0), scores [n] = probs[i, label] (unmasked), boxes [n, 4] =
        boxes_per_cls[i, label].
    """
    num_classes = boxes_per_cls.shape[1]
    fg = probs[:, :num_classes]
    keep = per_class_nms_mask(fg, boxes_per_cls, nms_thresh)
    labels = torch.where(keep, fg, torch.zeros_like(fg)).argmax(dim=1)
    rows = torch.arange(fg.shape[0], device=fg.device)
    return labels, fg[rows, labels], boxes_per_cls[rows, labels]
