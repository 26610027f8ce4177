"""The reach of an SGDet prediction (kern_d2/evaluation/pair_reach.py) on hand-made images, and tools/sgdet_reach.py's
refusal of a config that is not SGDet."""
import subprocess
import sys

import numpy as np
import pytest

from kern_d2.evaluation.pair_reach import image_reach, summarize_reach
from tests.helpers import REPO_ROOT

# Three gt boxes: 0 and 1 overlap, 2 stands apart. Relations 0->1 and 0->2.
GT = {
    "boxes": np.array([[0, 0, 10, 10], [5, 5, 15, 15], [30, 30, 40, 40]], dtype=float),
    "labels": np.array([1, 2, 3]),
    "relations": np.array([[0, 1, 1], [0, 2, 2]]),
}


def prediction(boxes, labels, pairs):
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    return {"boxes": np.asarray(boxes, dtype=float), "labels": np.asarray(labels), "scores": np.ones(len(labels)),
            "rel_pairs": pairs, "rel_scores": np.full((len(pairs), 3), 1 / 3)}


def test_a_relation_is_reachable_only_through_a_scored_pair_of_matching_boxes():
    boxes = GT["boxes"]
    only_overlapping = image_reach(GT, prediction(boxes, [1, 2, 3], [[0, 1], [1, 0]]))
    assert only_overlapping.reachable.tolist() == [True, False]
    assert only_overlapping.gt_boxes_overlap.tolist() == [True, False]
    assert (only_overlapping.num_boxes, only_overlapping.num_pairs) == (3, 2)
    # The reversed pair does not reach 0->2; the right pair does.
    assert image_reach(GT, prediction(boxes, [1, 2, 3], [[2, 0]])).reachable.tolist() == [False, False]
    assert image_reach(GT, prediction(boxes, [1, 2, 3], [[0, 2]])).reachable.tolist() == [False, True]


def test_labels_and_iou_decide_the_match():
    wrong_label = image_reach(GT, prediction(GT["boxes"], [1, 3, 3], [[0, 1], [0, 2]]))
    assert wrong_label.reachable.tolist() == [False, True]
    # [0, 0, 10, 12] against gt [0, 0, 10, 10]: IoU 100 / 120 = 0.83 (a match); [0, 0, 10, 25]: 0.4 (none).
    near = prediction([[0, 0, 10, 12], [5, 5, 15, 15], [30, 30, 40, 40]], [1, 2, 3], [[0, 1]])
    far = prediction([[0, 0, 10, 25], [5, 5, 15, 15], [30, 30, 40, 40]], [1, 2, 3], [[0, 1]])
    assert image_reach(GT, near).reachable.tolist() == [True, False]
    assert image_reach(GT, far).reachable.tolist() == [False, False]
    # A duplicate box with another label gives a second chance at the label.
    duplicate = prediction([[0, 0, 10, 10], [0, 0, 10, 10], [30, 30, 40, 40]], [2, 1, 3], [[1, 2]])
    assert image_reach(GT, duplicate).reachable.tolist() == [False, True]


def test_summary_counts_relations_not_images():
    no_pairs = image_reach(GT, prediction(GT["boxes"], [1, 2, 3], []))
    both = image_reach(GT, prediction(GT["boxes"], [1, 2, 3], [[0, 1], [0, 2]]))
    one_relation = {"boxes": GT["boxes"], "labels": GT["labels"], "relations": GT["relations"][:1]}
    third = image_reach(one_relation, prediction(GT["boxes"], [1, 2, 3], [[0, 1]]))
    summary = summarize_reach([no_pairs, both, third])
    assert summary["gt_relations"] == 5 and summary["images"] == 3
    assert summary["reach"] == pytest.approx(100 * 3 / 5)
    assert summary["gt_overlapping"] == pytest.approx(100 * 3 / 5)
    assert summary["pairs_per_image"] == pytest.approx(3 / 3)
    assert summary["boxes_per_image"] == pytest.approx(3.0)


@pytest.mark.slow
def test_tool_refuses_a_config_that_is_not_sgdet():
    proc = subprocess.run([sys.executable, "tools/sgdet_reach.py", "--config-file", "configs/toy/kern_predcls.yaml"],
                          cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "not an SGDet config" in proc.stderr and "USE_GT_BOX False" in proc.stderr
