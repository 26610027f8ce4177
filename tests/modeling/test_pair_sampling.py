"""Candidate pairs, their relation labels and the training sample of pairs, on hand-computed cases."""
import pytest
import torch

from detectron2.structures import Boxes

from kern_d2.modeling.pair_sampling import (
    all_ordered_pairs,
    detected_pair_labels,
    gt_pair_labels,
    overlapping,
    sample_pairs,
)


def test_all_ordered_pairs_row_major_without_self_pairs():
    pairs = all_ordered_pairs(3, torch.device("cpu"))
    assert pairs.dtype == torch.int64
    assert pairs.tolist() == [[0, 1], [0, 2], [1, 0], [1, 2], [2, 0], [2, 1]]
    assert all_ordered_pairs(5, torch.device("cpu")).shape == (20, 2)


@pytest.mark.parametrize("num_boxes", [0, 1])
def test_no_pairs_without_two_boxes(num_boxes):
    pairs = all_ordered_pairs(num_boxes, torch.device("cpu"))
    assert pairs.shape == (0, 2) and pairs.dtype == torch.int64


def test_overlapping_needs_positive_intersection_area():
    boxes = Boxes(torch.tensor([
        [0.0, 0, 10, 10],   # 0
        [5, 5, 15, 15],     # 1: overlaps 0 (25 px)
        [10, 0, 20, 10],    # 2: touches 0 along x = 10 (zero area), overlaps 1
        [7, 7, 9, 9],       # 3: inside 0 and inside 1
        [30, 30, 40, 40],   # 4: apart from everything
    ]))
    pairs = all_ordered_pairs(5, torch.device("cpu"))
    overlap = overlapping(boxes, pairs)
    expected = {(0, 1), (0, 3), (1, 2), (1, 3)}
    expected |= {(o, s) for s, o in expected}
    assert {tuple(p) for p in pairs[overlap].tolist()} == expected
    assert overlapping(boxes, pairs[:0]).shape == (0,)


def test_gt_pair_labels():
    relations = torch.tensor([[0, 1, 2], [2, 0, 5], [1, 2, 3]])
    labels = gt_pair_labels(4, relations)
    expected = torch.zeros(4, 4, dtype=torch.int64)
    expected[0, 1], expected[2, 0], expected[1, 2] = 2, 5, 3
    assert torch.equal(labels, expected)
    assert torch.equal(gt_pair_labels(2, torch.zeros(0, 3, dtype=torch.int64)), torch.zeros(2, 2, dtype=torch.int64))


# Gt: box 0 (class 1) at the top left, box 1 (class 2) to its right, box 2 (class 3) below box 0.
GT_BOXES = Boxes(torch.tensor([[0.0, 0, 10, 10], [20, 0, 30, 10], [0, 20, 10, 30]]))
GT_CLASSES = torch.tensor([1, 2, 3])
GT_RELATIONS = torch.tensor([[0, 1, 4], [2, 1, 6]])
# Detections and their IoU with the gt boxes they resemble.
DET_BOXES = Boxes(torch.tensor([
    [0.0, 0, 10, 10],   # 0: gt 0, IoU 1, class 1
    [21, 0, 31, 10],    # 1: gt 1, IoU 90 / 110 = 0.82, class 2
    [0, 0, 10, 20],     # 2: gt 0, IoU 100 / 200 = 0.5 exactly, class 1
    [20, 0, 30, 10],    # 3: gt 1, IoU 1 but class 3 (wrong label)
    [0, 0, 10, 21],     # 4: gt 0, IoU 100 / 210 = 0.476, class 1
    [0, 20, 10, 30],    # 5: gt 2, IoU 1, class 3
]))
DET_CLASSES = torch.tensor([1, 2, 1, 3, 1, 3])


def test_detected_pair_labels_need_iou_and_matching_labels():
    labels = detected_pair_labels(DET_BOXES, DET_CLASSES, GT_BOXES, GT_CLASSES, GT_RELATIONS, 0.5)
    expected = torch.zeros(6, 6, dtype=torch.int64)
    expected[0, 1] = 4  # both boxes match (gt 0, gt 1)
    expected[2, 1] = 4  # IoU exactly 0.5 counts
    expected[5, 1] = 6  # (gt 2, gt 1)
    # (0, 3): the object has the wrong label; (4, 1): IoU below 0.5; (1, 0): reversed direction.
    assert torch.equal(labels, expected)


def test_detected_pair_labels_threshold_is_a_parameter():
    labels = detected_pair_labels(DET_BOXES, DET_CLASSES, GT_BOXES, GT_CLASSES, GT_RELATIONS, 0.45)
    assert labels[4, 1] == 4  # IoU 0.476 now matches
    labels = detected_pair_labels(DET_BOXES, DET_CLASSES, GT_BOXES, GT_CLASSES, GT_RELATIONS, 0.9)
    assert labels[0, 1] == 0 and labels[5, 1] == 0  # the object (IoU 0.82) no longer matches gt 1


def test_detected_pair_with_several_gt_relations_gets_one_of_them():
    relations = torch.cat([GT_RELATIONS, torch.tensor([[0, 1, 7]])])  # gt pair (0, 1) has predicates 4 and 7
    seen = set()
    for seed in range(20):
        torch.manual_seed(seed)
        labels = detected_pair_labels(DET_BOXES, DET_CLASSES, GT_BOXES, GT_CLASSES, relations, 0.5)
        seen.add(int(labels[0, 1]))
        assert labels[5, 1] == 6 and labels[0, 3] == 0
    assert seen == {4, 7}


def test_detected_pair_labels_without_detections_or_relations():
    none = detected_pair_labels(DET_BOXES[:0], DET_CLASSES[:0], GT_BOXES, GT_CLASSES, GT_RELATIONS, 0.5)
    assert none.shape == (0, 0)
    no_rel = detected_pair_labels(DET_BOXES, DET_CLASSES, GT_BOXES, GT_CLASSES, GT_RELATIONS[:0], 0.5)
    assert torch.equal(no_rel, torch.zeros(6, 6, dtype=torch.int64))


def _pairs_and_labels(num_fg: int, num_bg: int):
    """Distinct pairs (i, i + 1) with labels 1..num_fg (foreground, all different) then 0 (background)."""
    m = num_fg + num_bg
    pairs = torch.stack([torch.arange(m), torch.arange(m) + 1], dim=1)
    labels = torch.cat([torch.arange(1, num_fg + 1), torch.zeros(num_bg, dtype=torch.int64)])
    return pairs, labels


def _check_consistent(pairs, labels, sampled_pairs, sampled_labels):
    """Sampled rows are distinct input rows; kept labels are the input labels (or -1 = ignore)."""
    rows = sampled_pairs[:, 0]
    assert rows.unique().numel() == rows.numel()
    assert torch.equal(sampled_pairs, pairs[rows])
    kept = sampled_labels >= 0
    assert torch.equal(sampled_labels[kept], labels[rows][kept])
    assert (labels[rows][~kept] > 0).all()  # only foreground is ever ignored


def test_sample_pairs_caps_foreground_at_a_quarter():
    pairs, labels = _pairs_and_labels(num_fg=10, num_bg=30)
    torch.manual_seed(0)
    sampled_pairs, sampled_labels = sample_pairs(pairs, labels, batch_size=16, positive_fraction=0.25)
    _check_consistent(pairs, labels, sampled_pairs, sampled_labels)
    assert sampled_pairs.shape == (16, 2)
    assert (sampled_labels > 0).sum() == 4 and (sampled_labels == 0).sum() == 12


def test_sample_pairs_takes_all_foreground_under_the_cap():
    pairs, labels = _pairs_and_labels(num_fg=3, num_bg=30)
    sampled_pairs, sampled_labels = sample_pairs(pairs, labels, batch_size=16, positive_fraction=0.25)
    _check_consistent(pairs, labels, sampled_pairs, sampled_labels)
    assert sorted(sampled_labels[sampled_labels > 0].tolist()) == [1, 2, 3]
    assert (sampled_labels == 0).sum() == 13


def test_sample_pairs_keeps_everything_when_fewer_pairs_than_the_batch():
    pairs, labels = _pairs_and_labels(num_fg=2, num_bg=10)
    sampled_pairs, sampled_labels = sample_pairs(pairs, labels, batch_size=64, positive_fraction=0.25)
    _check_consistent(pairs, labels, sampled_pairs, sampled_labels)
    assert sorted(sampled_pairs[:, 0].tolist()) == list(range(12))


def test_sample_pairs_ignores_extra_foreground_when_background_runs_out():
    # 8 foreground, 2 background, batch 8: 2 foreground (the cap) + 2 background, the other 4 places ignored.
    pairs, labels = _pairs_and_labels(num_fg=8, num_bg=2)
    sampled_pairs, sampled_labels = sample_pairs(pairs, labels, batch_size=8, positive_fraction=0.25)
    _check_consistent(pairs, labels, sampled_pairs, sampled_labels)
    assert sampled_pairs.shape == (8, 2)
    assert (sampled_labels > 0).sum() == 2 and (sampled_labels == 0).sum() == 2 and (sampled_labels == -1).sum() == 4


def test_sample_pairs_draws_foreground_at_random():
    pairs, labels = _pairs_and_labels(num_fg=10, num_bg=30)
    drawn = set()
    for seed in range(10):
        torch.manual_seed(seed)
        _, sampled_labels = sample_pairs(pairs, labels, batch_size=16, positive_fraction=0.25)
        drawn |= set(sampled_labels[sampled_labels > 0].tolist())
    assert drawn == set(range(1, 11))


def test_sample_pairs_of_no_pairs():
    pairs, labels = _pairs_and_labels(0, 0)
    sampled_pairs, sampled_labels = sample_pairs(pairs, labels, batch_size=16, positive_fraction=0.25)
    assert sampled_pairs.shape == (0, 2) and sampled_labels.shape == (0,)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_targets_need_no_device_sync():
    device = torch.device("cuda")
    boxes, classes = Boxes(DET_BOXES.tensor.to(device)), DET_CLASSES.to(device)
    gt_boxes, gt_classes = Boxes(GT_BOXES.tensor.to(device)), GT_CLASSES.to(device)
    relations = GT_RELATIONS.to(device)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        pairs = all_ordered_pairs(len(boxes), device)
        labels = detected_pair_labels(boxes, classes, gt_boxes, gt_classes, relations, 0.5)
        sampled_pairs, sampled_labels = sample_pairs(pairs, labels[pairs[:, 0], pairs[:, 1]], 16, 0.25)
        gt_labels = gt_pair_labels(3, relations)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert sampled_pairs.shape == (16, 2) and (sampled_labels > 0).sum().item() == 3
    assert gt_labels[0, 1].item() == 4
