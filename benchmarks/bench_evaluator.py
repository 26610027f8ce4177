"""Time the scene graph metrics at Visual Genome test scale on synthetic SGDet predictions.

Per image: ~11 gt boxes, ~6 gt relations (some duplicated rows), 64 detections, all 4,032 ordered pairs x 51
predicates, float32 scores as the model outputs them. Predictions are generated image by image (memory stays
bounded) and only the metric computation is timed: ``SGGMetricAccumulator.add`` per image plus ``summarize``,
which gives every metric (R, ng-R, mR, ng-mR, zR, ng-zR at K = 20, 50, 100).

A baseline on a subset shows the ratio to the straightforward vectorised ranking (a full stable argsort of all
pair x predicate scores per image, as ``np.argsort(-scores, kind="stable")``).

    python benchmarks/bench_evaluator.py [--images 26000] [--baseline-images 1000]
"""
import argparse
import time

import numpy as np

from kern_d2.evaluation.sgg_metrics import SGGMetricAccumulator, _first_hit_ranks, pairwise_iou

NUM_CLASSES, NUM_PREDICATES, NUM_DETECTIONS = 150, 51, 64


def synthetic_image(rng: np.random.Generator):
    """One gt dict and one SGDet prediction dict in the formats of ``compute_sgg_metrics``."""
    num_gt = int(rng.integers(4, 19))
    xy = rng.uniform(0, 500, size=(num_gt, 2))
    wh = rng.uniform(20, 300, size=(num_gt, 2))
    gt_boxes = np.concatenate([xy, xy + wh], axis=1)
    gt_labels = rng.integers(0, NUM_CLASSES, num_gt)
    num_rel = int(rng.integers(1, 12))  # 6 on average; pairs and duplicate rows drawn at random
    subj = rng.integers(0, num_gt, num_rel)
    obj = (subj + rng.integers(1, num_gt, num_rel)) % num_gt
    relations = np.stack([subj, obj, rng.integers(1, NUM_PREDICATES, num_rel)], axis=1)

    # Detections: jittered gt boxes (mostly the right label) first, then random boxes.
    jitter = rng.normal(0, 8, size=(num_gt, 4))
    rand_xy = rng.uniform(0, 500, size=(NUM_DETECTIONS - num_gt, 2))
    rand_wh = rng.uniform(10, 300, size=(NUM_DETECTIONS - num_gt, 2))
    boxes = np.concatenate([gt_boxes + jitter, np.concatenate([rand_xy, rand_xy + rand_wh], axis=1)])
    labels = np.concatenate([np.where(rng.random(num_gt) < 0.7, gt_labels, rng.integers(0, NUM_CLASSES, num_gt)),
                             rng.integers(0, NUM_CLASSES, NUM_DETECTIONS - num_gt)])
    scores = rng.random(NUM_DETECTIONS, dtype=np.float32)
    scores[:num_gt] = np.sqrt(scores[:num_gt])
    i, j = np.nonzero(~np.eye(NUM_DETECTIONS, dtype=bool))
    rel_pairs = np.stack([i, j], axis=1)
    rel_scores = rng.random((rel_pairs.shape[0], NUM_PREDICATES), dtype=np.float32) ** 4
    # Some signal, so that recall is in a realistic range: the gt predicates of the detections of gt boxes.
    gt_pair_index = subj * (NUM_DETECTIONS - 1) + obj - (obj > subj)
    rel_scores[gt_pair_index, relations[:, 2]] += rng.uniform(0, 8, num_rel).astype(np.float32)
    rel_scores /= rel_scores.sum(axis=1, keepdims=True)
    gt = {"boxes": gt_boxes, "labels": gt_labels, "relations": relations}
    pred = {"boxes": boxes.astype(np.float32), "labels": labels, "scores": scores, "rel_pairs": rel_pairs,
            "rel_scores": rel_scores}
    return gt, pred


def full_sort_baseline(gt, pred, max_k=100, iou_thresh=0.5):
    """The straightforward vectorised version: full stable argsorts of every candidate, same hit test."""
    rel_scores = pred["rel_scores"].astype(np.float64)
    scores = pred["scores"].astype(np.float64)
    pairs = pred["rel_pairs"]
    pair_scores = scores[pairs[:, 0]] * scores[pairs[:, 1]]
    fg = rel_scores[:, 1:]
    best = fg.argmax(1)
    gc = np.argsort(-(fg[np.arange(len(best)), best] * pair_scores), kind="stable")[:max_k]
    ng = np.argsort(-(fg * pair_scores[:, None]).ravel(), kind="stable")[:max_k]
    match = pairwise_iou(gt["boxes"], pred["boxes"]) >= iou_thresh
    rels = gt["relations"]
    a = _first_hit_ranks(rels, gt["labels"], match, pairs, pred["labels"], gc, best[gc] + 1, max_k)
    b = _first_hit_ranks(rels, gt["labels"], match, pairs, pred["labels"], ng // fg.shape[1], ng % fg.shape[1] + 1,
                         max_k)
    return a, b


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=26000)
    parser.add_argument("--baseline-images", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    zero_shot = np.stack([rng.integers(0, NUM_CLASSES, 20000), rng.integers(0, NUM_CLASSES, 20000),
                          rng.integers(1, NUM_PREDICATES, 20000)], axis=1)
    accumulator = SGGMetricAccumulator("sgdet", ks=(20, 50, 100), zero_shot_triplets=zero_shot)
    add_time, baseline_time, ours_subset_time = 0.0, 0.0, 0.0
    for index in range(args.images):
        gt, pred = synthetic_image(rng)
        start = time.perf_counter()
        record = accumulator.add(gt, pred)
        elapsed = time.perf_counter() - start
        add_time += elapsed
        if index < args.baseline_images:
            ours_subset_time += elapsed
            start = time.perf_counter()
            rank_gc, rank_ng = full_sort_baseline(gt, pred)
            baseline_time += time.perf_counter() - start
            if not (np.array_equal(rank_gc, record.rank_gc) and np.array_equal(rank_ng, record.rank_ng)):
                raise AssertionError(f"image {index}: ranks differ from the full-sort baseline")
    start = time.perf_counter()
    metrics = accumulator.summarize()
    summarize_time = time.perf_counter() - start

    total = add_time + summarize_time
    print(f"images: {args.images} (SGDet, 64 detections, 4,032 pairs x {NUM_PREDICATES} predicates)")
    print(f"per-image add: {1e3 * add_time / args.images:.3f} ms   summarize: {summarize_time:.3f} s")
    print(f"all metrics, both constraints, K = 20/50/100: {total:.1f} s")
    if args.baseline_images:
        n = min(args.baseline_images, args.images)
        print(f"full-sort baseline on {n} images: {1e3 * baseline_time / n:.3f} ms/image vs ours "
              f"{1e3 * ours_subset_time / n:.3f} ms/image (x{baseline_time / ours_subset_time:.2f}); ranks identical")
    print("  ".join(f"{k}={100 * v:.2f}" for k, v in metrics.items() if k != "per_predicate"))


if __name__ == "__main__":
    main()
