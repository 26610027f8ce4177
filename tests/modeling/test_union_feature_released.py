"""The released union feature (MODEL.ROI_RELATION_HEAD.UNION_FEATURE "released"): soft masks, the conv-ReLU-BN
encoder and the fc6 -> ReLU -> dropout -> fc7 head against hand-derived numbers and the independent float64 port of
the released code (tests/helpers/released_port_union.py); built through a config, trained one step, initialised from the
detector's box head."""
import numpy as np
import pytest
import torch
from torch.testing import assert_close

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.structures import Boxes

from kern_d2.layers import PairUnionPooler
from kern_d2.layers.soft_box_masks import soft_box_pair_masks
from kern_d2.modeling.union_feature import (
    ReleasedSpatialMaskEncoder, ReleasedUnionFCHead, SpatialMaskEncoder, UnionFeatureExtractor,
)

from tests.helpers.released_port_union import draw_union_boxes, released_rects, released_spatial, released_union_forward
from tests.helpers.toy_models import map_dicts, register_toy_with_priors, toy_detector_cfg, toy_kern_cfg

pytestmark = pytest.mark.usefixtures("single_torch_thread")

CHANNELS, RESOLUTION, MASK_SIZE, FC_DIMS = 8, 7, 27, [16, 12]
STRIDES = (8, 16)
EXACT = dict(rtol=0, atol=1e-10)


def random_boxes(num, generator, dtype=torch.float64, size=200.0):
    xy = torch.rand(num, 2, generator=generator, dtype=dtype) * size
    wh = 0.5 + torch.rand(num, 2, generator=generator, dtype=dtype) * size / 2
    return torch.cat([xy, xy + wh], dim=1)


# ------------------------------------------------------------------------------------------------ soft masks
def test_masks_hand_derived():
    # S = 4. Union of pairs 0-2 is box 1 = [0, 0, 40, 40]: one cell per 10 px.
    boxes = torch.tensor([
        [0, 0, 15, 10],   # 0: cell (0, 0) and half of cell (0, 1)
        [0, 0, 40, 40],   # 1: the whole union
        [5, 25, 25, 35],  # 2: half cells at its four edges
        [2, 0, 6, 10],    # 3: both x edges inside column 0: (1 - 0.2) * 0.6 = 0.48, not the 0.4 covered
        [10, 20, 30, 40],  # 4 and 5: union [10, 10, 50, 40], 10 px x 7.5 px cells
        [20, 10, 50, 30],
    ], dtype=torch.float64)
    pairs = torch.tensor([[0, 1], [2, 1], [3, 1], [4, 5]])
    masks = soft_box_pair_masks(boxes, pairs, 4)
    assert masks.shape == (4, 2, 4, 4) and masks.dtype == torch.float64
    expected = torch.zeros(4, 2, 4, 4, dtype=torch.float64)
    expected[:3, 1] = 1.0
    expected[0, 0, 0] = torch.tensor([1.0, 0.5, 0.0, 0.0])
    expected[1, 0, 2:] = torch.tensor([0.25, 0.5, 0.25, 0.0])
    expected[2, 0, 0, 0] = 0.48
    # pair (4, 5): subject x in cells [0, 2] -> (1, 1, 0, 0), y in [4/3, 4] -> (0, 2/3, 1, 1);
    # object x in [1, 4] -> (0, 1, 1, 1), y in [0, 8/3] -> (1, 1, 2/3, 0).
    f64 = dict(dtype=torch.float64)
    subject_x, subject_y = torch.tensor([1, 1, 0, 0], **f64), torch.tensor([0, 2 / 3, 1, 1], **f64)
    object_x, object_y = torch.tensor([0, 1, 1, 1], **f64), torch.tensor([1, 1, 2 / 3, 0], **f64)
    expected[3, 0] = torch.outer(subject_y, subject_x)
    expected[3, 1] = torch.outer(object_y, object_x)
    assert_close(masks, expected, **EXACT)
    # the port of draw_rectangles.pyx agrees on the hand-derived numbers
    rois = torch.cat([boxes[pairs[:, 0]], boxes[pairs[:, 1]]], dim=1).numpy()
    np.testing.assert_allclose(draw_union_boxes(rois, 4), expected.numpy(), rtol=0, atol=1e-12)


def test_masks_equal_the_released_port_on_random_boxes():
    g = torch.Generator().manual_seed(0)
    boxes = random_boxes(30, g)
    pairs = torch.randint(0, 30, (60, 2), generator=g)
    pairs = torch.cat([pairs, torch.tensor([[3, 3], [0, 1]])])  # a box with itself; a plain pair
    masks = soft_box_pair_masks(boxes, pairs, MASK_SIZE)
    expected = released_rects(boxes.numpy(), pairs.numpy()) + 0.5
    assert masks.shape == (62, 2, MASK_SIZE, MASK_SIZE)
    assert_close(masks, torch.from_numpy(expected), **EXACT)
    assert torch.equal(masks[60, 0], torch.ones(MASK_SIZE, MASK_SIZE, dtype=torch.float64))
    # float32 boxes: float32 masks, close to the float64 ones
    masks32 = soft_box_pair_masks(Boxes(boxes), pairs, MASK_SIZE)  # Boxes hold float32
    assert masks32.dtype == torch.float32
    assert_close(masks32.double(), masks, rtol=0, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_masks_on_cuda_equal_cpu():
    g = torch.Generator().manual_seed(1)
    boxes = random_boxes(20, g)
    pairs = torch.randint(0, 20, (50, 2), generator=g)
    for dtype in (torch.float64, torch.float32):
        cpu = soft_box_pair_masks(boxes.to(dtype), pairs, MASK_SIZE)
        cuda = soft_box_pair_masks(boxes.to(dtype).cuda(), pairs.cuda(), MASK_SIZE)
        assert cuda.is_cuda
        assert_close(cuda.cpu(), cpu, rtol=0, atol=1e-6)


def test_masks_of_no_pairs_and_of_a_zero_width_union():
    boxes = torch.tensor([[5.0, 0, 5, 10], [5.0, 2, 5, 8]])
    assert soft_box_pair_masks(boxes, torch.zeros(0, 2, dtype=torch.int64), 5).shape == (0, 2, 5, 5)
    masks = soft_box_pair_masks(boxes, torch.tensor([[0, 1]]), 5)
    assert torch.isfinite(masks).all() and (masks == 0).all()


# ------------------------------------------------------------------------------------------------ encoder + head
def make_released(seed=0, fc_dims=FC_DIMS):
    """(encoder, head) in float64 with non-trivial BatchNorm statistics and affine parameters."""
    torch.manual_seed(seed)
    encoder = ReleasedSpatialMaskEncoder(CHANNELS, RESOLUTION, MASK_SIZE).double()
    head = ReleasedUnionFCHead(ShapeSpec(channels=CHANNELS, height=RESOLUTION, width=RESOLUTION), fc_dims).double()
    with torch.no_grad():
        for bn in (encoder.bn1, encoder.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
        for fc in (head.fc1, head.fc2):
            fc.bias.uniform_(-0.1, 0.1)
    return encoder, head


def port_weights(encoder, head):
    """Our parameters under the released module's names (copies)."""
    names = {"conv.0": encoder.conv1, "conv.2": encoder.bn1, "conv.4": encoder.conv2, "conv.6": encoder.bn2,
             "fc6": head.fc1, "fc7": head.fc2}
    return {f"{released}.{key}": value.detach().clone()
            for released, module in names.items() for key, value in module.state_dict().items()}


def test_encoder_layers_as_released():
    encoder, head = make_released()
    assert encoder.conv1.out_channels == CHANNELS // 2 and encoder.conv2.out_channels == CHANNELS
    assert encoder.conv1.bias is not None and encoder.conv2.bias is not None
    assert encoder.bn1.momentum == encoder.bn2.momentum == 0.01 and encoder.bn1.eps == 1e-5
    assert head.dropout.p == 0.5
    assert set(head.state_dict()) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    assert head.output_shape.channels == FC_DIMS[-1]


def test_encoder_and_head_equal_the_released_port_in_eval_mode():
    encoder, head = make_released()
    encoder.eval(), head.eval()
    g = torch.Generator().manual_seed(2)
    boxes = random_boxes(12, g)
    pairs = torch.randint(0, 12, (25, 2), generator=g)
    rects = torch.from_numpy(released_rects(boxes.numpy(), pairs.numpy()))
    union = torch.randn(25, CHANNELS, RESOLUTION, RESOLUTION, generator=g, dtype=torch.float64)
    weights = port_weights(encoder, head)
    assert_close(encoder(rects), released_spatial(rects, weights), **EXACT)
    out = head(union + encoder(rects))
    expected = released_union_forward(union, rects, weights)
    assert out.shape == (25, FC_DIMS[-1])
    assert_close(out, expected, **EXACT)
    assert (out < 0).any()  # no final ReLU


def test_encoder_training_mode_equals_the_port_and_updates_running_statistics():
    encoder, _ = make_released()
    encoder.train()
    g = torch.Generator().manual_seed(3)
    rects = torch.rand(9, 2, MASK_SIZE, MASK_SIZE, generator=g, dtype=torch.float64) - 0.5
    weights = port_weights(encoder, make_released()[1])
    expected = released_spatial(rects, weights, training=True)
    assert_close(encoder(rects), expected, **EXACT)
    for ours, released in ((encoder.bn1, "conv.2"), (encoder.bn2, "conv.6")):
        assert_close(ours.running_mean, weights[released + ".running_mean"], **EXACT)
        assert_close(ours.running_var, weights[released + ".running_var"], **EXACT)
    # an empty batch leaves the statistics alone
    before = encoder.bn1.running_mean.clone()
    assert encoder(rects[:0]).shape == (0, CHANNELS, RESOLUTION, RESOLUTION)
    assert torch.equal(encoder.bn1.running_mean, before)


def test_encoder_on_no_pairs_gives_every_parameter_a_zero_gradient():
    # DistributedDataParallel fails the next step when a rank's step left parameters without a gradient: SGDet on
    # several GPUs with a batch without pairs on one of them.
    encoder, head = make_released()
    encoder.train(), head.train()
    head(encoder(torch.zeros(0, 2, MASK_SIZE, MASK_SIZE, dtype=torch.float64))).sum().backward()
    for name, parameter in [*encoder.named_parameters(), *head.named_parameters()]:
        assert parameter.grad is not None and not parameter.grad.any(), name


def test_head_dropout_only_in_training():
    _, head = make_released()
    x = torch.randn(6, CHANNELS, RESOLUTION, RESOLUTION, dtype=torch.float64)
    head.eval()
    assert torch.equal(head(x), head(x))
    head.train()
    torch.manual_seed(0)
    assert not torch.equal(head(x), head(x))


def test_mask_size_must_fit_the_pooled_resolution():
    with pytest.raises(ValueError, match="MASK_SIZE = 4 \\* POOLER_RESOLUTION - 1 = 19"):
        ReleasedSpatialMaskEncoder(CHANNELS, 5, 27)
    assert ReleasedSpatialMaskEncoder(CHANNELS, 5, 19)(torch.zeros(2, 2, 19, 19)).shape == (2, CHANNELS, 5, 5)


# ------------------------------------------------------------------------------------------------ extractor
def test_extractor_equals_the_released_port():
    encoder, head = make_released()
    pooler = PairUnionPooler(RESOLUTION, [1.0 / s for s in STRIDES], sampling_ratio=2)
    extractor = UnionFeatureExtractor(pooler, MASK_SIZE, CHANNELS, RESOLUTION, head, variant="released").double()
    assert isinstance(extractor.spatial, ReleasedSpatialMaskEncoder)
    extractor.spatial.load_state_dict(encoder.state_dict())
    extractor.eval()
    g = torch.Generator().manual_seed(4)
    features = [torch.randn(2, CHANNELS, 128 // s, 160 // s, generator=g, dtype=torch.float64) for s in STRIDES]
    boxes = [random_boxes(5, g, size=100.0), random_boxes(4, g, size=100.0)]  # float64 tensors, not Boxes
    pairs = [torch.randint(0, 5, (7, 2), generator=g), torch.randint(0, 4, (5, 2), generator=g)]
    out = extractor(features, boxes, pairs)
    all_boxes = torch.cat(boxes).numpy()
    all_pairs = torch.cat([pairs[0], pairs[1] + 5]).numpy()
    rects = torch.from_numpy(released_rects(all_boxes, all_pairs))
    expected = released_union_forward(pooler(features, boxes, pairs), rects, port_weights(encoder, head))
    assert out.shape == (12, FC_DIMS[-1]) and out.dtype == torch.float64
    assert_close(out, expected, **EXACT)


def test_kern_d2_variant_is_unchanged_by_default():
    pooler = PairUnionPooler(RESOLUTION, [1.0 / s for s in STRIDES], sampling_ratio=2)
    extractor = UnionFeatureExtractor(pooler, MASK_SIZE, CHANNELS, RESOLUTION, torch.nn.Identity())
    assert extractor.variant == "kern_d2" and type(extractor.spatial) is SpatialMaskEncoder
    with pytest.raises(ValueError, match="variant"):
        UnionFeatureExtractor(pooler, MASK_SIZE, CHANNELS, RESOLUTION, torch.nn.Identity(), variant="other")


# ------------------------------------------------------------------------------------------------ through a config
RELEASED = {"MODEL.ROI_RELATION_HEAD.UNION_FEATURE": "released"}


@pytest.fixture(scope="module")
def toy(toy_dataset_root, tmp_path_factory):
    toy = register_toy_with_priors(toy_dataset_root, str(tmp_path_factory.mktemp("priors") / "priors.npz"))
    toy.batch_train = [d for d in toy.train if len(d["annotations"]) >= 3][:2]
    return toy


def test_config_builds_and_trains_one_step(toy):
    torch.manual_seed(0)
    np.random.seed(0)
    cfg = toy_kern_cfg(toy, "predcls", **RELEASED)
    model = build_model(cfg)
    union = model.roi_heads.union_feature
    assert union.variant == "released"
    assert isinstance(union.spatial, ReleasedSpatialMaskEncoder) and isinstance(union.fc_head, ReleasedUnionFCHead)
    channels = cfg.MODEL.FPN.OUT_CHANNELS
    assert union.spatial.conv2.out_channels == channels and union.spatial.conv1.out_channels == channels // 2
    assert union.output_size == cfg.MODEL.ROI_BOX_HEAD.FC_DIM
    model.train()
    before = {k: v.clone() for k, v in union.state_dict().items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.01)
    losses = model(map_dicts(cfg, toy.batch_train, is_train=True))
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in union.parameters())
    optimizer.step()
    after = union.state_dict()
    for key in ("spatial.conv1.weight", "spatial.bn2.weight", "fc_head.fc1.weight", "fc_head.fc2.bias",
                "spatial.bn1.running_mean", "spatial.bn2.running_var"):
        assert not torch.equal(after[key], before[key]), key
    assert after["spatial.bn1.num_batches_tracked"] == 1


def test_detector_checkpoint_initialises_the_released_union_head(toy, tmp_path):
    torch.manual_seed(3)
    detector = build_model(toy_detector_cfg(toy))
    DetectionCheckpointer(detector, save_dir=str(tmp_path)).save("detector")
    model = build_model(toy_kern_cfg(toy, "sgdet", **RELEASED))
    spatial_before = {k: v.clone() for k, v in model.roi_heads.union_feature.spatial.state_dict().items()}
    DetectionCheckpointer(model).load(str(tmp_path / "detector.pth"))
    box_head = detector.roi_heads.box_head.state_dict()
    union_head = model.roi_heads.union_feature.fc_head.state_dict()
    assert set(union_head) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"} <= set(box_head)
    for key, value in union_head.items():
        assert torch.equal(value, box_head[key]), key
    spatial = model.roi_heads.union_feature.spatial.state_dict()
    assert all(torch.equal(spatial[k], v) for k, v in spatial_before.items())
