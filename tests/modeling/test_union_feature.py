"""UnionFeatureExtractor against its definition composed from detectron2's ROIPooler on materialised union boxes,
the reference rectangle masks and the spatial encoder."""
import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from detectron2.layers import ShapeSpec
from detectron2.modeling.poolers import ROIPooler, assign_boxes_to_levels
from detectron2.modeling.roi_heads.box_head import FastRCNNConvFCHead
from detectron2.structures import Boxes

from kern_d2.layers import PairUnionPooler, box_pair_masks_reference, union_boxes
from kern_d2.modeling.union_feature import SpatialMaskEncoder, UnionFeatureExtractor

CHANNELS, RESOLUTION, MASK_SIZE, FC_DIM = 8, 7, 27, 16
STRIDES = (8, 16)  # two FPN levels, as the toy backbone's p3 and p4
IMAGE_H, IMAGE_W = 96, 128
# Union boxes of sqrt(area) < 48 pool from p3, larger ones from p4 (the default canonical 224 would send all of
# these small images' unions to p3).
CANONICAL = dict(canonical_box_size=24, canonical_level=3)


def make_extractor(seed=0) -> UnionFeatureExtractor:
    torch.manual_seed(seed)
    pooler = PairUnionPooler(RESOLUTION, [1.0 / s for s in STRIDES], sampling_ratio=2, **CANONICAL)
    fc_head = FastRCNNConvFCHead(ShapeSpec(channels=CHANNELS, height=RESOLUTION, width=RESOLUTION),
                                 conv_dims=[], fc_dims=[FC_DIM, FC_DIM])
    return UnionFeatureExtractor(pooler, MASK_SIZE, CHANNELS, RESOLUTION, fc_head)


def make_batch(seed=0):
    """Features of 3 images at both levels; boxes of small and large sizes (so union boxes go to both levels);
    pairs per image, none in image 1."""
    g = torch.Generator().manual_seed(seed)
    features = [torch.randn(3, CHANNELS, IMAGE_H // s, IMAGE_W // s, generator=g) for s in STRIDES]
    boxes, pairs = [], []
    for num_boxes, num_pairs in ((5, 9), (2, 0), (4, 6)):
        xy = torch.rand(num_boxes, 2, generator=g) * torch.tensor([IMAGE_W * 0.6, IMAGE_H * 0.6])
        wh = 6 + torch.rand(num_boxes, 2, generator=g) * 40
        boxes.append(Boxes(torch.cat([xy, xy + wh], dim=1)))
        pairs.append(torch.randint(0, num_boxes, (num_pairs, 2), generator=g))
    return features, boxes, pairs


def composed_reference(extractor, features, boxes, pairs):
    """fc_head(ROIPooler(union boxes) + spatial(reference masks)), built from the parts of the definition."""
    roi_pooler = ROIPooler(RESOLUTION, [1.0 / s for s in STRIDES], 2, "ROIAlignV2", **CANONICAL)
    pooled = roi_pooler(features, [Boxes(union_boxes(b.tensor, p)) for b, p in zip(boxes, pairs)])
    offsets = torch.tensor([0, len(boxes[0]), len(boxes[0]) + len(boxes[1])])
    all_boxes = torch.cat([b.tensor for b in boxes])
    all_pairs = torch.cat([p + o for p, o in zip(pairs, offsets)])
    masks = box_pair_masks_reference(all_boxes, all_pairs, MASK_SIZE)
    return pooled, extractor.fc_head(pooled + extractor.spatial(masks))


def test_pooled_part_equals_roi_pooler_on_union_boxes():
    extractor = make_extractor()
    features, boxes, pairs = make_batch()
    pooled = extractor.pooler(features, boxes, pairs)
    expected, _ = composed_reference(extractor, features, boxes, pairs)
    assert pooled.shape == (15, CHANNELS, RESOLUTION, RESOLUTION)
    assert_close(pooled, expected, rtol=1e-5, atol=1e-5)
    levels = assign_boxes_to_levels([Boxes(union_boxes(b.tensor, p)) for b, p in zip(boxes, pairs)], 3, 4, **CANONICAL)
    assert set(levels.tolist()) == {0, 1}  # the batch exercises both levels


def test_union_feature_equals_composition_and_its_gradients():
    extractor = make_extractor()
    features, boxes, pairs = make_batch()
    features = [x.requires_grad_(True) for x in features]
    out = extractor(features, boxes, pairs)
    assert out.shape == (15, FC_DIM)
    _, expected = composed_reference(extractor, features, boxes, pairs)
    assert_close(out, expected, rtol=1e-5, atol=1e-5)

    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    params = [features[0], features[1], extractor.spatial.conv1.weight]
    grads = torch.autograd.grad((out * weights).sum(), params)
    expected_grads = torch.autograd.grad((expected * weights).sum(), params)
    for grad, expected_grad in zip(grads, expected_grads):
        assert_close(grad, expected_grad, rtol=1e-4, atol=1e-5)
    assert grads[2].abs().sum() > 0  # the spatial map is trained through the fc head


def test_subject_object_order_matters():
    extractor = make_extractor()
    features, boxes, _ = make_batch()
    pairs = [torch.tensor([[0, 1], [1, 0]]), torch.zeros(0, 2, dtype=torch.int64), torch.zeros(0, 2, dtype=torch.int64)]
    out = extractor(features, boxes, pairs)
    # Same union box, so the same pooled region; the masks (subject channel, object channel) swap.
    pooled = extractor.pooler(features, boxes, pairs)
    assert torch.equal(pooled[0], pooled[1])
    assert not torch.allclose(out[0], out[1])


def test_no_pairs():
    extractor = make_extractor()
    features, boxes, _ = make_batch()
    empty = [torch.zeros(0, 2, dtype=torch.int64)] * 3
    assert extractor(features, boxes, empty).shape == (0, FC_DIM)


@pytest.mark.parametrize("resolution", [7, 5, 14])
def test_spatial_encoder_output_shape(resolution):
    encoder = SpatialMaskEncoder(CHANNELS, resolution)
    masks = (torch.rand(4, 2, MASK_SIZE, MASK_SIZE) > 0.5).float()
    out = encoder(masks)
    assert out.shape == (4, CHANNELS, resolution, resolution)
    assert (out >= 0).all()


def test_bf16_autocast_close_to_fp32():
    extractor = make_extractor()
    features, boxes, pairs = make_batch()
    reference = extractor(features, boxes, pairs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = extractor(features, boxes, pairs)
    assert out.dtype == torch.bfloat16
    assert_close(out.float(), reference, rtol=0.05, atol=0.05)


def test_spatial_encoder_is_conv_relu_pool_conv_relu():
    """conv1's bias and the ReLU after the max-pool, channels_last (as the encoder runs it), equal the definition's
    order, values and gradients."""
    torch.manual_seed(0)
    encoder = SpatialMaskEncoder(out_channels=8, resolution=4).double()
    masks = (torch.rand(5, 2, 15, 15, dtype=torch.float64) > 0.5).double()

    def definition(x):
        x = F.max_pool2d(F.relu(encoder.conv1(x)), 3, stride=2, padding=1)
        return F.relu(encoder.conv2(x))

    out = encoder(masks)
    ref = definition(masks)
    assert out.shape == (5, 8, 4, 4)
    torch.testing.assert_close(out, ref)
    grads = torch.autograd.grad(out.sum(), list(encoder.parameters()))
    ref_grads = torch.autograd.grad(ref.sum(), list(encoder.parameters()))
    for grad, ref_grad in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref_grad)
