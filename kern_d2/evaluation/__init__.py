"""Scene graph evaluation: recall metrics (R@K, ng-R@K, mR@K, ng-mR@K, zR@K) and a Detectron2 evaluator."""
from .sgg_evaluator import SceneGraphEvaluator, gt_from_dataset_dict, mode_from_cfg, unseen_triplets
from .sgg_metrics import (
    ImageHits,
    SGGMetricAccumulator,
    compute_sgg_metrics,
    gt_predicate_counts,
    merge_image_hits,
    summarize_image_hits,
)

__all__ = [
    "ImageHits",
    "SGGMetricAccumulator",
    "SceneGraphEvaluator",
    "compute_sgg_metrics",
    "gt_from_dataset_dict",
    "gt_predicate_counts",
    "merge_image_hits",
    "mode_from_cfg",
    "summarize_image_hits",
    "unseen_triplets",
]
