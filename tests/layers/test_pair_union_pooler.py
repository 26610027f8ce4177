"""PairUnionPooler against detectron2's ROIPooler run on materialised union boxes."""
import pytest
import torch
from torch.testing import assert_close

from detectron2.modeling.poolers import ROIPooler, assign_boxes_to_levels
from detectron2.structures import Boxes

from kern_d2.layers import PairUnionPooler, union_boxes

from tests.helpers.pair_union_cases import CANONICAL, make_batch, pooled_with_grads

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def reference(features, boxes, pair_idxs, scales, aligned=True, sampling_ratio=0):
    pooler = ROIPooler(7, scales, sampling_ratio, "ROIAlignV2" if aligned else "ROIAlign", **CANONICAL)
    return pooler(features, [Boxes(union_boxes(b, p)) for b, p in zip(boxes, pair_idxs)])


@pytest.mark.parametrize("num_levels", [1, 3])
@pytest.mark.parametrize("aligned", [True, False])
def test_matches_roi_pooler_on_union_boxes(num_levels, aligned):
    features, boxes, pair_idxs = make_batch(num_levels=num_levels)
    scales = [1 / 2 ** (2 + level) for level in range(num_levels)]
    pooler = PairUnionPooler(7, scales, sampling_ratio=0, aligned=aligned, **CANONICAL)
    out, grads = pooled_with_grads(pooler, features, [Boxes(b) for b in boxes], pair_idxs)
    ref, ref_grads = pooled_with_grads(
        lambda x, b, p: reference(x, b, p, scales, aligned), features, boxes, pair_idxs
    )
    assert out.shape == (16, 4, 7, 7)
    assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for grad, ref_grad in zip(grads, ref_grads):
        assert_close(grad, ref_grad, rtol=1e-5, atol=1e-5)
    if num_levels == 3:  # the batch exercises every level
        levels = assign_boxes_to_levels(
            [Boxes(union_boxes(b, p)) for b, p in zip(boxes, pair_idxs)], 2, 4, **CANONICAL
        )
        assert set(levels.tolist()) == {0, 1, 2}


def test_order_is_images_then_pairs():
    features, boxes, pair_idxs = make_batch(num_levels=1, pairs_per_image=(3, 2, 4))
    pooler = PairUnionPooler(5, [0.25], sampling_ratio=2)
    out = pooler(features, boxes, pair_idxs)
    per_image = [pooler(features, [b if j == i else b[:0] for j, b in enumerate(boxes)],
                        [p if j == i else p[:0] for j, p in enumerate(pair_idxs)]) for i in range(3)]
    assert torch.equal(out, torch.cat(per_image))


def test_no_pairs_and_no_images():
    features, boxes, pair_idxs = make_batch(pairs_per_image=(0, 0, 0))
    pooler = PairUnionPooler(7, [1 / 4, 1 / 8, 1 / 16], sampling_ratio=0, **CANONICAL)
    assert pooler(features, boxes, pair_idxs).shape == (0, 4, 7, 7)
    empty_batch = [x[:0] for x in features]
    assert pooler(empty_batch, [], []).shape == (0, 4, 7, 7)


@pytest.mark.parametrize(
    "scales, message",
    [
        ([1 / 4, 1 / 6], "powers of 2"),
        ([1 / 4, 1 / 16], "do not form a pyramid"),
        ([], "non-empty"),
    ],
)
def test_invalid_scales_raise(scales, message):
    with pytest.raises(ValueError, match=message):
        PairUnionPooler(7, scales, sampling_ratio=0)


def test_invalid_inputs_raise():
    features, boxes, pair_idxs = make_batch()
    pooler = PairUnionPooler(7, [1 / 4, 1 / 8, 1 / 16], sampling_ratio=0)
    with pytest.raises(ValueError, match="expected 3 feature maps"):
        pooler(features[:2], boxes, pair_idxs)
    with pytest.raises(ValueError, match="batch size 3 but got boxes for 2 images"):
        pooler(features, boxes[:2], pair_idxs[:2])
    with pytest.raises(ValueError, match="feature map 1 has shape"):
        pooler([features[0], features[1][:, :2], features[2]], boxes, pair_idxs)
    with pytest.raises(ValueError, match="boxes of image 2 must be \\[K, 4\\]"):
        pooler(features, boxes[:2] + [boxes[2][:, :3]], pair_idxs)
    with pytest.raises(ValueError, match="pair_idxs of image 0 must be int64"):
        pooler(features, boxes, [pair_idxs[0].int()] + pair_idxs[1:])
    bad = [pair_idxs[0].clone()] + pair_idxs[1:]
    bad[0][0, 1] = 6  # image 0 has 6 boxes: index 6 is the first box of image 1
    with pytest.raises(RuntimeError, match="both boxes of a pair must be in the same image"):
        pooler(features, boxes, bad)


@pytest.mark.parametrize("num_levels", [1, 3])
def test_inference_pools_both_orders_of_a_pair_once(num_levels):
    features, boxes, _ = make_batch(num_levels=num_levels)
    k = boxes[0].shape[0]
    all_pairs = torch.tensor([(s, o) for s in range(k) for o in range(k) if s != o])  # 30 ordered, 15 unordered
    pair_idxs = [all_pairs, all_pairs[:0], torch.tensor([[2, 5], [5, 2], [3, 3], [0, 1]])]
    scales = [1 / 2 ** (2 + level) for level in range(num_levels)]
    pooler = PairUnionPooler(7, scales, sampling_ratio=0, **CANONICAL)
    pooled_rows = []
    pool = pooler._pool
    pooler._pool = lambda x, scale, rois, pairs: pooled_rows.append(pairs.shape[0]) or pool(x, scale, rois, pairs)
    with torch.no_grad():  # inference: each unordered pair once
        out = pooler(features, boxes, pair_idxs)
    assert sum(pooled_rows) == 15 + 3
    assert out.shape == (34, 4, 7, 7)
    assert_close(out, reference(features, boxes, pair_idxs, scales), rtol=1e-5, atol=1e-5)
    pooled_rows.clear()  # with gradients: every pair
    out, grads = pooled_with_grads(pooler, features, boxes, pair_idxs)
    ref, ref_grads = pooled_with_grads(lambda x, b, p: reference(x, b, p, scales), features, boxes, pair_idxs)
    assert sum(pooled_rows) == 34
    assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for grad, ref_grad in zip(grads, ref_grads):
        assert_close(grad, ref_grad, rtol=1e-5, atol=1e-5)


@needs_cuda
@pytest.mark.parametrize("num_levels", [1, 3])
def test_cuda_matches_roi_pooler(num_levels):
    features, boxes, pair_idxs = make_batch(num_levels=num_levels, channels=80, seed=2)
    features = [x.cuda() for x in features]
    boxes = [b.cuda() for b in boxes]
    pair_idxs = [p.cuda() for p in pair_idxs]
    scales = [1 / 2 ** (2 + level) for level in range(num_levels)]
    pooler = PairUnionPooler(7, scales, sampling_ratio=0, **CANONICAL)
    out, grads = pooled_with_grads(pooler, features, boxes, pair_idxs)
    ref, ref_grads = pooled_with_grads(lambda x, b, p: reference(x, b, p, scales), features, boxes, pair_idxs)
    assert out.is_cuda
    assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for grad, ref_grad in zip(grads, ref_grads):
        assert_close(grad, ref_grad, rtol=1e-5, atol=1e-5)


def test_level_without_pairs_gets_zero_gradient():
    # Small union boxes only: every pair goes to the finest level; the other maps still take part in the graph.
    features = [torch.randn(1, 2, 32 // 2 ** level, 32 // 2 ** level) for level in range(3)]
    boxes = [torch.tensor([[1.0, 1.0, 4.0, 4.0], [2.0, 2.0, 5.0, 6.0]])]
    pair_idxs = [torch.tensor([[0, 1], [1, 0]])]
    pooler = PairUnionPooler(2, [1 / 4, 1 / 8, 1 / 16], sampling_ratio=2, **CANONICAL)
    out, grads = pooled_with_grads(pooler, features, boxes, pair_idxs)
    assert out.shape == (2, 2, 2, 2)
    assert grads[0].abs().sum() > 0
    assert grads[1].abs().sum() == 0 and grads[2].abs().sum() == 0
