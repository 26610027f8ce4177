"""Candidate pairs, their relation labels, and the training sample of pairs (per image)."""
from typing import Tuple

import torch

from detectron2.structures import Boxes, pairwise_iou
from detectron2.structures.boxes import pairwise_intersection


def all_ordered_pairs(num_boxes: int, device: torch.device) -> torch.Tensor:
    """All ordered pairs (i, j), i != j, of ``num_boxes`` boxes: int64 [n(n-1), 2], row-major.

    Built without a mask (whose indexing would wait for the device): the k-th partner of i is k, or k + 1 from i on.
    """
    if num_boxes < 2:
        return torch.zeros((0, 2), dtype=torch.int64, device=device)
    subj = torch.arange(num_boxes, device=device)[:, None].expand(num_boxes, num_boxes - 1)
    partner = torch.arange(num_boxes - 1, device=device)[None, :].expand(num_boxes, num_boxes - 1)
    obj = partner + (partner >= subj).to(torch.int64)
    return torch.stack([subj.reshape(-1), obj.reshape(-1)], dim=1)


def overlapping(boxes: Boxes, pairs: torch.Tensor) -> torch.Tensor:
    """bool [M]: whether the two boxes of each pair intersect with positive area."""
    if pairs.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=pairs.device)
    inter = pairwise_intersection(boxes, boxes)
    return inter[pairs[:, 0], pairs[:, 1]] > 0


def gt_pair_labels(num_boxes: int, gt_relations: torch.Tensor) -> torch.Tensor:
    """int64 [N, N] predicate of each gt box pair (0 = no relation) from rows (subject, object, predicate).

    A pair listed with several predicates keeps one of them (the mapper samples one per epoch in training).
    """
    labels = torch.zeros(num_boxes, num_boxes, dtype=torch.int64, device=gt_relations.device)
    labels[gt_relations[:, 0], gt_relations[:, 1]] = gt_relations[:, 2]
    return labels


def detected_pair_labels(
    det_boxes: Boxes,
    det_classes: torch.Tensor,
    gt_boxes: Boxes,
    gt_classes: torch.Tensor,
    gt_relations: torch.Tensor,
    iou_threshold: float,
) -> torch.Tensor:
    """int64 [N, N] predicate of each detected pair: a pair is foreground for a gt relation (s, o, p) when the
    subject box has IoU >= ``iou_threshold`` with gt box s and the same label, and likewise the object with o.
    Several matching gt relations: one of them, chosen at random."""
    num_det = len(det_boxes)
    if gt_relations.numel() == 0 or num_det == 0:
        return torch.zeros(num_det, num_det, dtype=torch.int64, device=det_classes.device)
    match = (pairwise_iou(det_boxes, gt_boxes) >= iou_threshold) & (det_classes[:, None] == gt_classes[None, :])
    subj_match = match[:, gt_relations[:, 0]]  # [N, R]
    obj_match = match[:, gt_relations[:, 1]]  # [N, R]
    both = subj_match.t()[:, :, None] & obj_match.t()[:, None, :]  # [R, N, N]
    priority = torch.rand(gt_relations.shape[0], 1, 1, device=both.device) + 1.0
    chosen = (both * priority).argmax(dim=0)  # [N, N] index of a matching relation
    labels = gt_relations[chosen, 2]
    return torch.where(both.any(dim=0), labels, torch.zeros_like(labels))


def sample_pairs(
    pairs: torch.Tensor, labels: torch.Tensor, batch_size: int, positive_fraction: float
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sample ``min(batch_size, M)`` pairs, at most ``int(batch_size * positive_fraction)`` of them foreground.

    pairs [M, 2], labels [M] (0 = background) -> (pairs [S, 2], labels [S]). As in Detectron2's
    ``subsample_labels``, background fills the places that foreground leaves free. When there is too little
    background to fill the sample, the remaining places hold further foreground pairs with label -1 (to be ignored
    by the loss): the sample size is then known without reading the labels, so nothing waits for the device.
    """
    num_pairs = labels.shape[0]
    size = min(batch_size, num_pairs)
    max_fg = int(batch_size * positive_fraction)
    foreground = labels > 0
    # A random order with the foreground first: positions [0, num_fg) foreground, then background.
    order = torch.argsort(torch.rand(num_pairs, device=labels.device) + 2.0 * foreground, descending=True)
    num_fg = foreground.sum()
    take_fg = num_fg.clamp(max=max_fg)
    position = torch.arange(num_pairs, device=labels.device)
    chosen = (position < take_fg) | ((position >= num_fg) & (position < num_fg + (size - take_fg)))
    # The chosen pairs first (in that order); when fewer than `size`, the rest of the sample is left-over foreground.
    pick = torch.argsort(chosen.to(torch.uint8), descending=True, stable=True)[:size]
    keep = order[pick]
    return pairs[keep], torch.where(chosen[pick], labels[keep], torch.full_like(labels[keep], -1))
