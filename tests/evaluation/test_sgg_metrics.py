"""Scene graph recall metrics: hand-computed cases for every rule, and a slow loop reference on random inputs."""
import itertools

import numpy as np
import pytest
import torch
from detectron2.structures import Boxes, pairwise_iou as d2_pairwise_iou

from kern_d2.evaluation import compute_sgg_metrics
from kern_d2.evaluation.sgg_metrics import _rankings, pairwise_iou, stable_topk_desc

UNIT_BOX = [0.0, 0.0, 10.0, 10.0]
FAR_BOX = [50.0, 50.0, 60.0, 60.0]


def gt_image(relations, boxes=(UNIT_BOX, FAR_BOX), labels=(0, 1)):
    return {"boxes": np.array(boxes, dtype=float).reshape(-1, 4), "labels": np.array(labels),
            "relations": np.array(relations, dtype=np.int64).reshape(-1, 3)}


def pred_image(rel_pairs, rel_scores, boxes=(UNIT_BOX, FAR_BOX), labels=(0, 1), scores=(1.0, 1.0)):
    return {"boxes": np.array(boxes, dtype=float).reshape(-1, 4), "labels": np.array(labels),
            "scores": np.array(scores, dtype=float), "rel_pairs": np.array(rel_pairs, dtype=np.int64).reshape(-1, 2),
            "rel_scores": np.array(rel_scores, dtype=float).reshape(len(rel_pairs), -1 if len(rel_pairs) else 2)}


# ---------------------------------------------------------------------------------------------------------------
# Hand-computed cases
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["predcls", "sgcls", "sgdet"])
def test_graph_constraint_tie_takes_lowest_predicate(mode):
    gt = gt_image([[0, 1, 3]])
    pred = pred_image([[0, 1]], [[0.0, 0.1, 0.4, 0.4]])  # predicates 2 and 3 tie
    m = compute_sgg_metrics([gt], [pred], mode, ks=(1, 2))
    assert m["R@1"] == 0.0 and m["R@2"] == 0.0  # one predicate per pair: 2 (the lowest of the tie)
    assert m["ng-R@1"] == 0.0 and m["ng-R@2"] == 1.0  # without constraint: 2 then 3 (ascending within the pair)
    assert m["per_predicate"]["ng-R@2"] == {3: 1.0}


@pytest.mark.parametrize("mode", ["predcls", "sgcls", "sgdet"])
def test_equal_triplet_scores_keep_input_order_at_the_cut(mode):
    gt = gt_image([[1, 0, 1]])
    pairs = [[0, 1], [1, 0]]
    scores = [[0.0, 0.5], [0.0, 0.5]]
    first = compute_sgg_metrics([gt], [pred_image(pairs, scores)], mode, ks=(1, 2))
    assert (first["R@1"], first["R@2"], first["ng-R@1"], first["ng-R@2"]) == (0.0, 1.0, 0.0, 1.0)
    second = compute_sgg_metrics([gt], [pred_image(pairs[::-1], scores)], mode, ks=(1, 2))
    assert (second["R@1"], second["ng-R@1"]) == (1.0, 1.0)


def test_ng_ties_order_pairs_then_predicates():
    # Candidates (pair 0, pred 1), (pair 0, pred 2), (pair 1, pred 1) all score 0.3: that is their order.
    gt = gt_image([[1, 0, 1]])
    pred = pred_image([[0, 1], [1, 0]], [[0.0, 0.3, 0.3], [0.0, 0.3, 0.1]])
    m = compute_sgg_metrics([gt], [pred], "predcls", ks=(2, 3))
    assert (m["ng-R@2"], m["ng-R@3"]) == (0.0, 1.0)
    assert (m["R@2"], m["R@3"]) == (1.0, 1.0)


def test_duplicate_gt_rows_count_on_their_own():
    gt = gt_image([[0, 1, 1], [0, 1, 1], [0, 1, 2]])
    pred = pred_image([[0, 1]], [[0.0, 0.6, 0.3]])
    m = compute_sgg_metrics([gt], [pred], "predcls", ks=(1, 2))
    assert m["R@1"] == pytest.approx(2 / 3) and m["R@2"] == pytest.approx(2 / 3)
    assert m["ng-R@1"] == pytest.approx(2 / 3) and m["ng-R@2"] == 1.0
    assert m["mR@2"] == pytest.approx(0.5)  # predicate 1: 2/2, predicate 2: 0/1
    assert m["per_predicate"]["R@2"] == {1: 1.0, 2: 0.0}


def test_images_without_relations_are_skipped():
    hit = (gt_image([[0, 1, 1]]), pred_image([[0, 1]], [[0.0, 1.0]]))
    empty = (gt_image(np.zeros((0, 3))), pred_image([[0, 1]], [[0.0, 1.0]]))
    no_pairs = (gt_image(np.zeros((0, 3))), pred_image(np.zeros((0, 2)), np.zeros((0, 2))))
    m = compute_sgg_metrics([hit[0], empty[0], no_pairs[0]], [hit[1], empty[1], no_pairs[1]], "sgdet", ks=(5,))
    assert m["R@5"] == 1.0 and m["mR@5"] == 1.0
    nothing = compute_sgg_metrics([empty[0]], [empty[1]], "sgdet", ks=(5,))
    assert np.isnan(nothing["R@5"]) and np.isnan(nothing["mR@5"]) and nothing["per_predicate"]["R@5"] == {}


def test_image_with_no_predicted_pairs_misses_everything():
    gts = [gt_image([[0, 1, 1]]), gt_image([[0, 1, 1]])]
    preds = [pred_image([[0, 1]], [[0.0, 1.0]]), pred_image(np.zeros((0, 2)), np.zeros((0, 2)))]
    assert compute_sgg_metrics(gts, preds, "sgdet", ks=(5,))["R@5"] == 0.5


@pytest.mark.parametrize("legacy", [False, True])
def test_sgdet_iou_just_above_and_below_threshold(legacy):
    gt = gt_image([[0, 1, 1]])
    one = 1.0 if legacy else 0.0
    # Subject box [0, 0, 10, y2] inside the gt box [0, 0, 10, 10]: IoU = (y2 + one) / (10 + one).
    y_at_threshold = 0.5 * (10 + one) - one
    for y2, expected in [(y_at_threshold + 0.01, 1.0), (y_at_threshold, 1.0), (y_at_threshold - 0.01, 0.0)]:
        pred = pred_image([[0, 1]], [[0.0, 1.0]], boxes=([0, 0, 10, y2], FAR_BOX))
        assert compute_sgg_metrics([gt], [pred], "sgdet", ks=(1,), legacy_iou=legacy)["R@1"] == expected, y2
        obj_pred = pred_image([[0, 1]], [[0.0, 1.0]], boxes=(UNIT_BOX, [50, 50, 60, 50 + y2]))
        assert compute_sgg_metrics([gt], [obj_pred], "sgdet", ks=(1,), legacy_iou=legacy)["R@1"] == expected, y2


def test_legacy_iou_changes_a_borderline_case():
    # IoU of [0,0,10,10] and [0,0,10,4.5]: 0.45 without, 60.5 / 121 = 0.5 with the +1 pixel convention.
    gt = gt_image([[0, 1, 1]])
    pred = pred_image([[0, 1]], [[0.0, 1.0]], boxes=([0, 0, 10, 4.5], FAR_BOX))
    assert compute_sgg_metrics([gt], [pred], "sgdet", ks=(1,))["R@1"] == 0.0
    assert compute_sgg_metrics([gt], [pred], "sgdet", ks=(1,), legacy_iou=True)["R@1"] == 1.0


def test_sgdet_needs_matching_labels_and_both_boxes():
    gt = gt_image([[0, 1, 1]])
    assert compute_sgg_metrics([gt], [pred_image([[0, 1]], [[0, 1.0]], labels=(0, 2))], "sgdet", ks=(1,))["R@1"] == 0
    swapped = pred_image([[0, 1]], [[0, 1.0]], boxes=(FAR_BOX, UNIT_BOX), labels=(0, 1))
    assert compute_sgg_metrics([gt], [swapped], "sgdet", ks=(1,))["R@1"] == 0


def test_predcls_ignores_predicted_labels_boxes_and_scores():
    gt = gt_image([[0, 1, 1], [1, 0, 2]])
    # Pair (0,1) has the higher predicate score; object scores would put pair (1,0) first if they were used.
    pred = pred_image([[1, 0], [0, 1]], [[0.0, 0.0, 0.5], [0.0, 0.6, 0.0]], labels=(7, 8), scores=(0.1, 1.0),
                      boxes=(FAR_BOX, UNIT_BOX))
    m = compute_sgg_metrics([gt], [pred], "predcls", ks=(1, 2))
    assert m["R@1"] == 0.5 and m["per_predicate"]["R@1"] == {1: 1.0, 2: 0.0}
    assert m["R@2"] == 1.0
    no_objects = {"rel_pairs": pred["rel_pairs"], "rel_scores": pred["rel_scores"]}
    assert compute_sgg_metrics([gt], [no_objects], "predcls", ks=(1, 2)) == m


def test_predcls_box_test_lets_a_duplicate_gt_box_hit():
    # Boxes 0 and 2 coincide with the same label: a prediction on box 2 hits the gt triplet on box 0.
    gt = gt_image([[0, 1, 1]], boxes=(UNIT_BOX, FAR_BOX, UNIT_BOX), labels=(0, 1, 0))
    pred = {"rel_pairs": np.array([[2, 1]]), "rel_scores": np.array([[0.0, 1.0]])}
    assert compute_sgg_metrics([gt], [pred], "predcls", ks=(1,))["R@1"] == 1.0
    far = gt_image([[0, 1, 1]], boxes=(UNIT_BOX, FAR_BOX, [0, 0, 10, 4]), labels=(0, 1, 0))
    assert compute_sgg_metrics([far], [pred], "predcls", ks=(1,))["R@1"] == 0.0


def test_sgcls_uses_predicted_labels_and_scores():
    mid_box = [20.0, 20.0, 30.0, 30.0]
    gt = gt_image([[0, 1, 1], [2, 1, 2]], boxes=(UNIT_BOX, FAR_BOX, mid_box), labels=(0, 1, 2))
    pred = pred_image([[2, 1], [0, 1]], [[0.0, 0.0, 0.5], [0.0, 0.6, 0.0]], boxes=(UNIT_BOX, FAR_BOX, mid_box),
                      labels=(0, 1, 2), scores=(1.0, 1.0, 1.0))
    # Triplet scores: pair (2,1) 0.5, pair (0,1) 0.6.
    m = compute_sgg_metrics([gt], [pred], "sgcls", ks=(1,))
    assert m["per_predicate"]["R@1"] == {1: 1.0, 2: 0.0}
    pred["scores"] = np.array([0.5, 1.0, 1.0])  # pair (0,1) now 0.6 x 0.5 = 0.3 < 0.5: the other pair first
    assert compute_sgg_metrics([gt], [pred], "sgcls", ks=(1,))["per_predicate"]["R@1"] == {1: 0.0, 2: 1.0}
    assert compute_sgg_metrics([gt], [pred], "predcls", ks=(1,))["per_predicate"]["R@1"] == {1: 1.0, 2: 0.0}
    pred["labels"] = np.array([0, 5, 2])  # wrong object label: nothing can hit
    assert compute_sgg_metrics([gt], [pred], "sgcls", ks=(2,))["R@2"] == 0.0
    assert compute_sgg_metrics([gt], [pred], "predcls", ks=(2,))["R@2"] == 1.0


def test_ng_and_graph_constraint_differ_on_a_pair_with_two_predicates():
    gt = gt_image([[0, 1, 1], [0, 1, 2]])
    pred = pred_image([[0, 1]], [[0.1, 0.5, 0.4]])
    for mode in ("predcls", "sgcls", "sgdet"):
        m = compute_sgg_metrics([gt], [pred], mode, ks=(2,))
        assert (m["R@2"], m["ng-R@2"], m["mR@2"], m["ng-mR@2"]) == (0.5, 1.0, 0.5, 1.0)


def test_mean_recall_averages_over_images_then_present_predicates():
    # Predicate 1: image A 1/1, image B 1/2 -> 0.75 (not the pooled 2/3). Predicate 2: image B 1/1 -> 1.
    # Predicates 3..5 have columns but no gt: they are not averaged in.
    a = (gt_image([[0, 1, 1]]), pred_image([[0, 1]], [[0, 1.0, 0, 0, 0, 0]]))
    gt_b = gt_image([[0, 1, 1], [1, 0, 1], [0, 2, 2]], boxes=(UNIT_BOX, FAR_BOX, [20, 20, 30, 30]), labels=(0, 1, 2))
    pred_b = pred_image([[0, 1], [0, 2]], [[0, 1.0, 0, 0, 0, 0], [0, 0, 1.0, 0, 0, 0]],
                        boxes=(UNIT_BOX, FAR_BOX, [20, 20, 30, 30]), labels=(0, 1, 2), scores=(1, 1, 1))
    m = compute_sgg_metrics([a[0], gt_b], [a[1], pred_b], "sgdet", ks=(5,))
    assert m["per_predicate"]["R@5"] == {1: 0.75, 2: 1.0}
    assert m["mR@5"] == pytest.approx(0.875)
    assert m["R@5"] == pytest.approx((1.0 + 2 / 3) / 2)


def test_zero_shot_recall():
    zero_shot = {(0, 1, 2)}  # (subject label, object label, predicate)
    a = (gt_image([[0, 1, 1], [0, 1, 2]]), pred_image([[0, 1]], [[0, 0.2, 0.8]]))  # hits the zero-shot one
    b = (gt_image([[0, 1, 2], [0, 1, 2], [1, 0, 2]]), pred_image([[0, 1]], [[0, 0.9, 0.1]]))  # zero-shot: 2 rows
    c = (gt_image([[1, 0, 1]]), pred_image([[1, 0]], [[0, 1.0, 0]]))  # no zero-shot triplet: not in zR
    gts, preds = zip(a, b, c)
    m = compute_sgg_metrics(gts, preds, "predcls", ks=(1, 2), zero_shot_triplets=zero_shot)
    assert m["zR@1"] == pytest.approx((1.0 + 0.0) / 2)
    assert m["ng-zR@2"] == pytest.approx((1.0 + 1.0) / 2)
    as_array = compute_sgg_metrics(gts, preds, "predcls", ks=(1, 2), zero_shot_triplets=np.array([[0, 1, 2]]))
    assert as_array == m
    assert "zR@1" not in compute_sgg_metrics(gts, preds, "predcls", ks=(1, 2))
    none = compute_sgg_metrics(gts, preds, "predcls", ks=(1,), zero_shot_triplets=set())
    assert np.isnan(none["zR@1"]) and np.isnan(none["ng-zR@1"])


def test_keys_and_order():
    m = compute_sgg_metrics([gt_image([[0, 1, 1]])], [pred_image([[0, 1]], [[0, 1.0]])], "sgdet",
                            zero_shot_triplets=[(0, 1, 1)])
    expected = [f"{p}{name}@{k}" for name in ("R", "mR", "zR") for p in ("", "ng-") for k in (20, 50, 100)]
    assert list(m) == expected + ["per_predicate"]
    assert list(m["per_predicate"]) == [f"{p}R@{k}" for p in ("", "ng-") for k in (20, 50, 100)]
    assert all(m[k] == 1.0 for k in expected)


def test_bad_input_names_the_image_and_key():
    gt = dict(gt_image([[0, 1, 1]]), image_id=42)
    with pytest.raises(ValueError, match=r"image 42 prediction: 'rel_pairs'"):
        compute_sgg_metrics([gt], [pred_image([[0, 2]], [[0, 1.0]])], "sgdet")
    with pytest.raises(ValueError, match="image 42.*NaN"):
        compute_sgg_metrics([gt], [pred_image([[0, 1]], [[0, np.nan]])], "sgdet")
    with pytest.raises(ValueError, match="image 42.*index-aligned"):
        compute_sgg_metrics([gt], [pred_image([[0, 1]], [[0, 1.0]], labels=(0, 1, 1), scores=(1, 1, 1),
                                              boxes=(UNIT_BOX,) * 3)], "sgcls")
    with pytest.raises(ValueError, match="image 42.*gt predicate 3"):
        compute_sgg_metrics([dict(gt, relations=np.array([[0, 1, 3]]))], [pred_image([[0, 1]], [[0, 1.0]])], "sgdet")
    with pytest.raises(KeyError, match="rel_scores"):
        compute_sgg_metrics([gt], [{"rel_pairs": np.array([[0, 1]])}], "predcls")
    with pytest.raises(ValueError, match="mode"):
        compute_sgg_metrics([gt], [pred_image([[0, 1]], [[0, 1.0]])], "detection")


# ---------------------------------------------------------------------------------------------------------------
# Building blocks against references
# ---------------------------------------------------------------------------------------------------------------
def test_pairwise_iou_matches_detectron2():
    rng = np.random.default_rng(0)
    a = np.concatenate([rng.uniform(0, 50, (30, 2)), rng.uniform(0, 50, (30, 2))], axis=1)
    a[:, 2:] += a[:, :2]
    b = np.concatenate([a[:10] + rng.normal(0, 3, (10, 4)), [[5, 5, 5, 9]]])  # plus a degenerate box
    a[:, 2:] = np.maximum(a[:, 2:], a[:, :2])
    b[:, 2:] = np.maximum(b[:, 2:], b[:, :2])
    ours = pairwise_iou(a, b)
    theirs = d2_pairwise_iou(Boxes(torch.tensor(a)), Boxes(torch.tensor(b))).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-7)  # detectron2 computes in float32


@pytest.mark.parametrize("n,k", [(5, 10), (40, 10), (1000, 7), (1000, 100)])
def test_stable_topk_matches_stable_argsort(n, k):
    rng = np.random.default_rng(n + k)
    for _ in range(20):
        scores = rng.integers(0, 6, n).astype(float) / 4  # many ties
        np.testing.assert_array_equal(stable_topk_desc(scores, k), np.argsort(-scores, kind="stable")[:k])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pruned_ranking_equals_full_sort(dtype):
    rng = np.random.default_rng(1)
    for trial in range(20):
        rel = rng.random((300, 11)).astype(dtype)
        if trial % 2:
            rel = (np.round(rel * 4) / 4).astype(dtype)  # ties
        pair_scores = rng.random(300)
        if trial % 5 == 0:
            pair_scores[:3] = 0.0
        if trial == 7:
            pair_scores[5] = -0.5  # takes the unpruned path
        fg = rel[:, 1:].astype(np.float64)
        gc = fg.max(1) * pair_scores
        gc_order = np.argsort(-gc, kind="stable")[:25]
        ng_order = np.argsort(-(fg * pair_scores[:, None]).ravel(), kind="stable")[:25]
        gc_pairs, gc_preds, ng_pairs, ng_preds = _rankings(rel, pair_scores, 25, "test")
        np.testing.assert_array_equal(gc_pairs, gc_order)
        np.testing.assert_array_equal(gc_preds, fg[gc_order].argmax(1) + 1)
        np.testing.assert_array_equal(ng_pairs * 10 + ng_preds - 1, ng_order)


# ---------------------------------------------------------------------------------------------------------------
# Slow, obviously correct reference on random inputs
# ---------------------------------------------------------------------------------------------------------------
def reference_iou(a, b, legacy):
    one = 1.0 if legacy else 0.0
    w = min(a[2], b[2]) - max(a[0], b[0]) + one
    h = min(a[3], b[3]) - max(a[1], b[1]) + one
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    area_a = (a[2] - a[0] + one) * (a[3] - a[1] + one)
    area_b = (b[2] - b[0] + one) * (b[3] - b[1] + one)
    return inter / (area_a + area_b - inter)


def reference_metrics(gts, preds, mode, ks, iou_thresh, zero_shot, legacy):
    recalls = {f"{p}R@{k}": [] for p in ("", "ng-") for k in ks}
    zs_recalls = {f"{p}zR@{k}": [] for p in ("", "ng-") for k in ks}
    per_pred = {f"{p}R@{k}": {} for p in ("", "ng-") for k in ks}  # predicate -> list of per-image fractions
    for gt, pred in zip(gts, preds):
        if len(gt["relations"]) == 0:
            continue
        if mode == "predcls":
            boxes, labels, scores = gt["boxes"], gt["labels"], [1.0] * len(gt["labels"])
        elif mode == "sgcls":
            boxes, labels, scores = gt["boxes"], pred["labels"], pred["scores"]
        else:
            boxes, labels, scores = pred["boxes"], pred["labels"], pred["scores"]
        gc, ng = [], []
        for m, (s, o) in enumerate(pred["rel_pairs"]):
            row = pred["rel_scores"][m]
            best = 1
            for p in range(1, len(row)):
                if row[p] > row[best]:
                    best = p
            obj_score = float(scores[s]) * float(scores[o])
            gc.append((float(row[best]) * obj_score, s, o, best))
            for p in range(1, len(row)):
                ng.append((float(row[p]) * obj_score, s, o, p))
        rankings = {"": sorted(gc, key=lambda t: -t[0]), "ng-": sorted(ng, key=lambda t: -t[0])}
        for prefix, k in itertools.product(rankings, ks):
            top = rankings[prefix][:k]
            hits = []
            for gs, go, gp in gt["relations"]:
                hits.append(any(
                    p == gp and labels[s] == gt["labels"][gs] and labels[o] == gt["labels"][go]
                    and reference_iou(boxes[s], gt["boxes"][gs], legacy) >= iou_thresh
                    and reference_iou(boxes[o], gt["boxes"][go], legacy) >= iou_thresh
                    for _, s, o, p in top))
            recalls[f"{prefix}R@{k}"].append(sum(hits) / len(hits))
            for predicate in set(int(r[2]) for r in gt["relations"]):
                mine = [h for h, r in zip(hits, gt["relations"]) if r[2] == predicate]
                per_pred[f"{prefix}R@{k}"].setdefault(predicate, []).append(sum(mine) / len(mine))
            if zero_shot is not None:
                zs_hits = [h for h, (gs, go, gp) in zip(hits, gt["relations"])
                           if (gt["labels"][gs], gt["labels"][go], gp) in zero_shot]
                if zs_hits:
                    zs_recalls[f"{prefix}zR@{k}"].append(sum(zs_hits) / len(zs_hits))
    mean = lambda values: sum(values) / len(values) if values else float("nan")  # noqa: E731
    out = {name: mean(values) for name, values in recalls.items()}
    for name, by_pred in per_pred.items():
        out[name.replace("R@", "mR@")] = mean([mean(v) for v in by_pred.values()])
    if zero_shot is not None:
        out.update({name: mean(values) for name, values in zs_recalls.items()})
    out["per_predicate"] = {name: {p: mean(v) for p, v in by_pred.items()} for name, by_pred in per_pred.items()}
    return out


def grid_boxes(rng, n):
    """Boxes with corners on a small integer grid: many equal, touching and borderline boxes."""
    xs, ys = np.sort(rng.integers(0, 8, (n, 2)), axis=1), np.sort(rng.integers(0, 8, (n, 2)), axis=1)
    return np.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], axis=1).astype(float)


def random_case(rng, mode, num_labels=3, num_predicates=4):
    num_gt = int(rng.integers(0, 5))
    gt_boxes = grid_boxes(rng, num_gt)
    gt_labels = rng.integers(0, num_labels, num_gt)
    num_rel = int(rng.integers(0, 5)) if num_gt else 0
    relations = np.stack([rng.integers(0, max(num_gt, 1), num_rel), rng.integers(0, max(num_gt, 1), num_rel),
                          rng.integers(1, num_predicates, num_rel)], axis=1).reshape(-1, 3)
    if mode == "sgdet":
        num_det = int(rng.integers(0, 6))
        boxes = np.concatenate([gt_boxes, grid_boxes(rng, num_det)])[rng.permutation(num_gt + num_det)]
        boxes += rng.choice([0.0, 0.0, 0.5, -1.0], boxes.shape)
        n = boxes.shape[0]
    else:
        boxes, n = gt_boxes, num_gt
    labels = rng.integers(0, num_labels, n)
    discrete = rng.random() < 0.7
    scores = (rng.integers(1, 5, n) / 4) if discrete else rng.random(n)
    num_pairs = int(rng.integers(0, 12)) if n else 0
    rel_pairs = rng.integers(0, max(n, 1), (num_pairs, 2))
    rel_scores = (rng.integers(0, 4, (num_pairs, num_predicates)) / 4) if discrete else rng.random(
        (num_pairs, num_predicates))
    rel_scores = rel_scores.astype(rng.choice([np.float32, np.float64]))
    return ({"boxes": gt_boxes, "labels": gt_labels, "relations": relations},
            {"boxes": boxes, "labels": labels, "scores": scores, "rel_pairs": rel_pairs, "rel_scores": rel_scores})


def assert_metrics_equal(ours, reference):
    assert ours.keys() == reference.keys()
    for name in ours:
        if name == "per_predicate":
            for metric in ours[name]:
                assert ours[name][metric].keys() == reference[name][metric].keys(), metric
                for p in ours[name][metric]:
                    assert ours[name][metric][p] == pytest.approx(reference[name][metric][p], rel=1e-12), (metric, p)
        else:
            assert ours[name] == pytest.approx(reference[name], rel=1e-12, nan_ok=True), name


@pytest.mark.parametrize("mode", ["predcls", "sgcls", "sgdet"])
def test_matches_slow_reference_on_random_inputs(mode):
    for seed in range(60):
        rng = np.random.default_rng(seed)
        gts, preds = zip(*[random_case(rng, mode) for _ in range(int(rng.integers(1, 6)))])
        ks = tuple(sorted(set(rng.integers(1, 12, 3).tolist())))
        iou_thresh = float(rng.choice([0.3, 0.5, 0.7]))
        legacy = bool(rng.random() < 0.3)
        zero_shot = {tuple(t) for t in rng.integers([0, 0, 1], [3, 3, 4], (4, 3)).tolist()} if seed % 2 else None
        ours = compute_sgg_metrics(gts, preds, mode, ks, iou_thresh, zero_shot, legacy)
        assert_metrics_equal(ours, reference_metrics(gts, preds, mode, ks, iou_thresh, zero_shot, legacy))
