"""SGDet objects from the detector's box predictions: per-class NMS on the best-scoring candidates only."""
from typing import List, Tuple

import torch

from detectron2.structures import Boxes, Instances

from ..layers.nms import batched_nms_topk


def top_candidate_detections(
    boxes: List[torch.Tensor],
    scores: List[torch.Tensor],
    image_shapes: List[Tuple[int, int]],
    score_thresh: float,
    nms_thresh: float,
    max_detections: int,
    candidates_per_detection: int = 100,
) -> List[Instances]:
    """Like Detectron2's ``fast_rcnn_inference``, but per-class NMS runs on the ``candidates_per_detection x
    max_detections`` best (proposal, class) candidates of each image instead of all R x C of them.

    With a score threshold of 0, all R x C candidates (1000 x 150 on VG) would enter NMS, which makes
    torchvision fall back to a loop over classes with a device sync each; the top slice keeps it one kernel.
    A candidate outside the slice is only lost if NMS removes more than the slice's other candidates.

    boxes: per image [R, C*4]; scores: per image [R, C+1] (last column background).
    Returns per image ``Instances`` with ``pred_boxes``, ``scores``, ``pred_classes`` (at most max_detections).
    """
    results = []
    for image_boxes, image_scores, shape in zip(boxes, scores, image_shapes):
        fg_scores = image_scores[:, :-1]
        num_classes = fg_scores.shape[1]
        flat_scores = fg_scores.reshape(-1)
        k = min(candidates_per_detection * max_detections, flat_scores.numel())
        top_scores, top_index = flat_scores.topk(k)
        keep = top_scores > score_thresh
        top_scores, top_index = top_scores[keep], top_index[keep]
        proposal, label = top_index // num_classes, top_index % num_classes
        cand = Boxes(image_boxes.reshape(-1, num_classes, 4)[proposal, label])
        cand.clip(shape)
        kept = batched_nms_topk(cand.tensor, top_scores, label, nms_thresh, max_detections)
        result = Instances(shape)
        result.pred_boxes = Boxes(cand.tensor[kept])
        result.scores = top_scores[kept]
        result.pred_classes = label[kept]
        results.append(result)
    return results
