"""kern_d2::nms_topk and batched_nms_topk (kern_d2.layers.nms) against torchvision's nms / batched_nms."""
import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounterWithBackend
from torchvision.ops import batched_nms, nms

from kern_d2.layers.compiled_ops import load_ops
from kern_d2.layers.nms import batched_nms_topk, nms_topk

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
THRESHOLDS = [0.0, 0.3, 0.7, 1.0]
# All of opcheck's checks, spelled out so that a new default does not pass unnoticed.
ALL_CHECKS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def random_boxes(n, seed=0, dtype=torch.float32, extent=100.0, max_size=40.0):
    """[n, 4] XYXY boxes crowded enough to overlap, and scores without ties (a permutation of (1..n) / (n + 1))."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * extent
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * max_size + 1
    boxes = torch.cat([xy, xy + wh], dim=1).to(dtype)
    scores = ((torch.randperm(n, generator=g) + 1).to(torch.float64) / (n + 1)).to(dtype)
    return boxes, scores


def three_boxes():
    """A far box C, a box B covering the top half of A (IoU(A, B) = 50 / 100 = 0.5 exactly) and A, with scores
    rising in that order: A is visited first, then B, then C."""
    boxes = torch.tensor([[20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 10.0, 5.0], [0.0, 0.0, 10.0, 10.0]])
    return boxes, torch.tensor([0.7, 0.8, 0.9])


# --------------------------------------------------------------------------------------------- against torchvision


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [0, 1, 2, 65, 300])
@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_matches_torchvision_nms(n, threshold, dtype):
    boxes, scores = random_boxes(n, seed=n, dtype=dtype)
    full = nms(boxes, scores, threshold)
    for max_keep in [0, 1, 64, n + 1]:
        kept = nms_topk(boxes, scores, threshold, max_keep)
        assert kept.dtype == torch.int64
        assert torch.equal(kept, full[:max_keep]), (max_keep, kept, full)


@pytest.mark.parametrize("n", [0, 1, 150, 300])
@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_batched_matches_torchvision_batched_nms(n, threshold):
    boxes, scores = random_boxes(n, seed=10 + n)
    idxs = torch.randint(0, 7, (n,), generator=torch.Generator().manual_seed(n))
    full = batched_nms(boxes, scores, idxs, threshold)
    for max_keep in [0, 1, 64, n + 1]:
        assert torch.equal(batched_nms_topk(boxes, scores, idxs, threshold, max_keep), full[:max_keep])


def test_batched_classes_do_not_suppress_each_other():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3)
    scores = torch.tensor([0.5, 0.9, 0.7])
    assert batched_nms_topk(boxes, scores, torch.tensor([0, 1, 0]), 0.5, 10).tolist() == [1, 2]
    assert batched_nms_topk(boxes, scores, torch.tensor([0, 1, 2]), 0.5, 10).tolist() == [1, 2, 0]


def test_mixed_float_dtypes_are_promoted():
    """fp32 boxes with bf16 scores (autocast): as torchvision's nms, which casts both to fp32 under autocast."""
    boxes, _ = random_boxes(100, seed=5)
    # k / 128 for k = 1..100: exact in bf16 (8 significant bits), so no ties.
    scores = ((torch.randperm(100, generator=torch.Generator().manual_seed(5)) + 1) / 128).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = nms(boxes, scores, 0.5)
    assert torch.equal(nms_topk(boxes, scores, 0.5, 1000), expected)
    assert torch.equal(nms_topk(boxes.double(), scores, 0.5, 1000), expected)


# ------------------------------------------------------------------------------------------------ by hand


@pytest.mark.parametrize("threshold, expected", [(0.4, [2, 0]), (0.5, [2, 1, 0]), (0.6, [2, 1, 0])])
def test_hand_built_overlap(threshold, expected):
    """IoU(A, B) = 0.5 removes B only when the threshold is below 0.5 (IoU > threshold suppresses)."""
    boxes, scores = three_boxes()
    assert nms_topk(boxes, scores, threshold, 10).tolist() == expected
    assert nms(boxes, scores, threshold).tolist() == expected


def test_early_exit_keeps_the_best_boxes():
    """max_keep below the kept count: the first max_keep of the full result, whatever comes after."""
    boxes, scores = three_boxes()
    assert nms_topk(boxes, scores, 0.4, 1).tolist() == [2]
    assert nms_topk(boxes, scores, 0.6, 2).tolist() == [2, 1]
    # 5 disjoint boxes: all would be kept; the 3 best by score come out.
    disjoint = torch.tensor([[20.0 * i, 0.0, 20.0 * i + 10, 10.0] for i in range(5)])
    assert nms_topk(disjoint, torch.tensor([0.1, 0.5, 0.3, 0.9, 0.2]), 0.5, 3).tolist() == [3, 1, 2]


def test_ties_keep_the_lower_index_first():
    disjoint = torch.tensor([[20.0 * i, 0.0, 20.0 * i + 10, 10.0] for i in range(4)])
    assert nms_topk(disjoint, torch.tensor([0.5, 0.5, 0.9, 0.5]), 0.5, 10).tolist() == [2, 0, 1, 3]
    # Boxes 1 and 3 are the same box with the same score: 1 is visited first and removes 3.
    same = torch.tensor([[0.0, 0.0, 5.0, 5.0], [10.0, 10.0, 20.0, 20.0], [30.0, 30.0, 35.0, 35.0],
                         [10.0, 10.0, 20.0, 20.0]])
    assert nms_topk(same, torch.tensor([0.2, 0.6, 0.1, 0.6]), 0.5, 10).tolist() == [1, 0, 2]


def test_threshold_one_keeps_identical_boxes_and_zero_removes_any_overlap():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [9.0, 9.0, 19.0, 19.0],
                          [10.0, 0.0, 20.0, 10.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    assert nms_topk(boxes, scores, 1.0, 10).tolist() == [0, 1, 2, 3]
    # Box 3 only touches box 0 (zero intersection): not an overlap.
    assert nms_topk(boxes, scores, 0.0, 10).tolist() == [0, 3]


# --------------------------------------------------------------------------------------------- invalid inputs


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(boxes=torch.zeros(5, 3)), r"boxes must be \[N, 4\]"),
        (dict(boxes=torch.zeros(5, 4, dtype=torch.int64)), "boxes must be a floating-point tensor"),
        (dict(scores=torch.zeros(4)), r"scores must be \[N\] with N = 5"),
        (dict(scores=torch.zeros(5, 1)), r"scores must be \[N\]"),
        (dict(scores=torch.zeros(5, dtype=torch.float64)), "scores must have the dtype of boxes"),
        (dict(iou_threshold=float("nan")), "iou_threshold must be finite"),
        (dict(iou_threshold=float("inf")), "iou_threshold must be finite"),
        (dict(max_keep=-1), "max_keep must be >= 0"),
    ],
)
@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_invalid_arguments_raise(changes, message, device):
    """The C++ checks (cpu) and the fake kernel's (meta tensors) name the argument."""
    args = dict(boxes=torch.zeros(5, 4), scores=torch.zeros(5), iou_threshold=0.5, max_keep=3)
    args.update(changes)
    args = [a.to(device) if torch.is_tensor(a) else a for a in args.values()]
    with pytest.raises((ValueError, RuntimeError), match=message):
        load_ops().nms_topk(*args)


def test_invalid_scores_device_raises():
    with pytest.raises((ValueError, RuntimeError), match="scores must be on the device of boxes"):
        load_ops().nms_topk(torch.zeros(5, 4, device="meta"), torch.zeros(5), 0.5, 3)


# ------------------------------------------------------------------------------------ registration and compile


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n, max_keep", [(0, 3), (40, 0), (40, 5), (40, 100)])
def test_opcheck(n, max_keep, dtype):
    """Schema, autograd registration (integer output: nothing to differentiate), the fake kernel's data-dependent
    output size against the real one, and AOT dispatch with dynamic shapes."""
    boxes, scores = random_boxes(n, seed=3, dtype=dtype)
    args = (boxes.requires_grad_(True), scores, 0.5, max_keep)
    torch.library.opcheck(load_ops().nms_topk, args, test_utils=ALL_CHECKS)


def test_compiled_batched_nms_topk_matches_eager():
    """One graph (fullgraph) with a data-dependent output length."""
    boxes, scores = random_boxes(120, seed=4)
    idxs = torch.randint(0, 4, (120,), generator=torch.Generator().manual_seed(4))
    counter = CompileCounterWithBackend("aot_eager")
    torch._dynamo.reset()
    try:
        with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
            compiled = torch.compile(batched_nms_topk, fullgraph=True, backend=counter)
            kept = compiled(boxes, scores, idxs, 0.5, 20)
    finally:
        torch._dynamo.reset()
    assert counter.frame_count == 1
    assert torch.equal(kept, batched_nms(boxes, scores, idxs, 0.5)[:20])


# ------------------------------------------------------------------------------------------------------- CUDA


@CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [0, 1, 63, 64, 65, 1000, 6400])
@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_cuda_matches_cpu_and_torchvision(n, threshold, dtype):
    boxes, scores = random_boxes(n, seed=20 + n, dtype=dtype, extent=400.0, max_size=80.0)
    cpu_full = nms_topk(boxes, scores, threshold, n)
    assert torch.equal(cpu_full, nms(boxes, scores, threshold))
    cuda_boxes, cuda_scores = boxes.cuda(), scores.cuda()
    torchvision_cuda = nms(cuda_boxes, cuda_scores, threshold).cpu()
    for max_keep in [0, 1, 64, n, n + 5]:
        kept = nms_topk(cuda_boxes, cuda_scores, threshold, max_keep)
        assert kept.device.type == "cuda" and kept.dtype == torch.int64
        assert torch.equal(kept.cpu(), cpu_full[:max_keep]), (n, threshold, max_keep)
        assert torch.equal(kept.cpu(), torchvision_cuda[:max_keep]), (n, threshold, max_keep)


@CUDA
@pytest.mark.parametrize("n", [300, 6400])
def test_cuda_batched_matches_cpu_and_torchvision(n):
    """The SGDet shape: n (box, class) candidates of 150 classes, the best 64 kept."""
    boxes, scores = random_boxes(n, seed=30, extent=600.0, max_size=120.0)
    idxs = torch.randint(0, 150, (n,), generator=torch.Generator().manual_seed(n))
    cpu = batched_nms_topk(boxes, scores, idxs, 0.5, 64)
    cuda = batched_nms_topk(boxes.cuda(), scores.cuda(), idxs.cuda(), 0.5, 64)
    reference = batched_nms(boxes.cuda(), scores.cuda(), idxs.cuda(), 0.5)[:64]
    assert len(cpu) == 64
    assert torch.equal(cuda.cpu(), cpu)
    assert torch.equal(cuda, reference)


@CUDA
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_matches_cpu(dtype):
    boxes, scores = random_boxes(500, seed=40, dtype=dtype)
    for threshold in THRESHOLDS:
        assert torch.equal(nms_topk(boxes.cuda(), scores.cuda(), threshold, 100).cpu(),
                           nms_topk(boxes, scores, threshold, 100))


@CUDA
def test_cuda_ties_and_hand_built_case():
    boxes, scores = three_boxes()
    for threshold, expected in [(0.4, [2, 0]), (0.6, [2, 1, 0])]:
        assert nms_topk(boxes.cuda(), scores.cuda(), threshold, 10).tolist() == expected
    # 200 disjoint boxes, all of one score: index order; stopping after 70 crosses a 64-box word.
    disjoint = torch.tensor([[20.0 * i, 0.0, 20.0 * i + 10, 10.0] for i in range(200)]).cuda()
    assert nms_topk(disjoint, torch.full((200,), 0.5).cuda(), 0.5, 70).tolist() == list(range(70))
    # Identical boxes with one score: the lowest index is kept.
    same = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 130).cuda()
    assert nms_topk(same, torch.full((130,), 0.5).cuda(), 0.5, 10).tolist() == [0]
