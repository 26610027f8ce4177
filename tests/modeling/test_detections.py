import torch

from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference

from kern_d2.modeling.detections import top_candidate_detections


def _random_predictions(num_proposals, num_classes, seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(num_proposals, num_classes, 2, generator=g) * 80
    wh = torch.rand(num_proposals, num_classes, 2, generator=g) * 40 + 2
    boxes = torch.cat([xy, xy + wh], dim=2).reshape(num_proposals, num_classes * 4)
    scores = torch.softmax(torch.randn(num_proposals, num_classes + 1, generator=g) * 3, dim=1)
    return boxes, scores


def test_same_as_detectron2_when_the_slice_covers_all_candidates():
    boxes, scores = _random_predictions(30, 5, seed=0)
    shape = (100, 110)
    ours = top_candidate_detections([boxes], [scores], [shape], 0.0, 0.3, 10, candidates_per_detection=15)[0]
    ref, _ = fast_rcnn_inference([boxes], [scores], [shape], 0.0, 0.3, 10)
    assert torch.equal(ours.pred_classes, ref[0].pred_classes)
    assert torch.allclose(ours.scores, ref[0].scores)
    assert torch.allclose(ours.pred_boxes.tensor, ref[0].pred_boxes.tensor)


def test_score_threshold_and_max_detections():
    boxes, scores = _random_predictions(50, 8, seed=1)
    result = top_candidate_detections([boxes], [scores], [(100, 110)], 0.2, 0.5, 4)[0]
    assert len(result) <= 4
    assert (result.scores > 0.2).all()
    assert (result.scores[:-1] >= result.scores[1:]).all()
    assert (result.pred_boxes.tensor[:, 2] <= 110).all() and (result.pred_boxes.tensor[:, 3] <= 100).all()
