"""kern_d2::pair_union_roi_align against torchvision.ops.roi_align on materialised union boxes."""
import sys
from types import SimpleNamespace

import pytest
import torch
from torch.testing import assert_close
from torchvision.ops import roi_align

from kern_d2.layers import pair_union, pair_union_roi_align, union_boxes

from tests.helpers.pair_union_cases import SCALE, make_case

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def union_rois(boxes: torch.Tensor, pair_idx: torch.Tensor) -> torch.Tensor:
    """[M, 5] (batch index, union box) rows: the composite's materialised input to roi_align."""
    return torch.cat([boxes[pair_idx[:, 0], :1], union_boxes(boxes[:, 1:], pair_idx)], dim=1)


def forward_and_grad(op, features, args, grad_seed=1):
    """op(features, *args) and d(sum(out * r))/d features for a fixed random r."""
    features = features.detach().requires_grad_(True)
    out = op(features, *args)
    r = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed)).to(out)
    (grad,) = torch.autograd.grad(out, features, r)
    return out.detach(), grad


def fused(features, boxes, pair_idx, size, scale, sampling_ratio, aligned):
    return pair_union_roi_align(features, boxes, pair_idx, size, scale, sampling_ratio, aligned)


def composite(features, boxes, pair_idx, size, scale, sampling_ratio, aligned):
    return roi_align(features, union_rois(boxes, pair_idx), size, scale, sampling_ratio, aligned)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("integral", [False, True])
def test_matches_torchvision_fp32(aligned, sampling_ratio, integral):
    features, boxes, pair_idx = make_case(integral=integral, seed=sampling_ratio + 3 * integral)
    args = (boxes, pair_idx, 7, SCALE, sampling_ratio, aligned)
    out, grad = forward_and_grad(fused, features, args)
    ref, ref_grad = forward_and_grad(composite, features, args)
    assert out.shape == (len(pair_idx), 3, 7, 7)
    assert (out - ref).abs().max() <= 1e-5
    assert_close(grad, ref_grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [-1, 3])
def test_matches_torchvision_fp64(aligned, sampling_ratio):
    features, boxes, pair_idx = make_case(seed=7, dtype=torch.float64)
    args = (boxes, pair_idx, 5, SCALE, sampling_ratio, aligned)
    out, grad = forward_and_grad(fused, features, args)
    ref, ref_grad = forward_and_grad(composite, features, args)
    assert_close(out, ref, rtol=1e-12, atol=1e-12)
    assert_close(grad, ref_grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("height, width", [(1, 1), (1, 9), (7, 1)])
def test_thin_feature_maps(height, width):
    features, boxes, pair_idx = make_case(height=height, width=width, seed=5)
    args = (boxes, pair_idx, 3, SCALE, 0, True)
    out, grad = forward_and_grad(fused, features, args)
    ref, ref_grad = forward_and_grad(composite, features, args)
    assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert_close(grad, ref_grad, rtol=1e-5, atol=1e-5)


def test_boxes_in_another_dtype_and_noncontiguous_features():
    features, boxes, pair_idx = make_case(integral=True, seed=9)
    expected = pair_union_roi_align(features, boxes, pair_idx, 4, SCALE, 2, True)
    channels_last = features.to(memory_format=torch.channels_last)
    assert_close(pair_union_roi_align(channels_last, boxes.double(), pair_idx, 4, SCALE, 2, True), expected)
    wide = torch.cat([features, features], dim=3)[..., : features.shape[3]]
    assert_close(pair_union_roi_align(wide, boxes, pair_idx, (4, 4), SCALE, 2, True), expected)


@pytest.mark.parametrize("aligned, sampling_ratio", [(True, 0), (False, 2)])
def test_gradcheck_float64(aligned, sampling_ratio):
    features, boxes, pair_idx = make_case(
        batch=2, channels=2, height=5, width=6, num_boxes=6, num_pairs=5, image_size=(20, 24), dtype=torch.float64
    )
    features.requires_grad_(True)

    def op(x):
        return pair_union_roi_align(x, boxes, pair_idx, 3, SCALE, sampling_ratio, aligned)

    assert torch.autograd.gradcheck(op, (features,))
    assert torch.autograd.gradgradcheck(op, (features,))


def test_empty_pairs_forward_and_backward():
    features, boxes, _ = make_case()
    features.requires_grad_(True)
    out = pair_union_roi_align(features, boxes, torch.zeros(0, 2, dtype=torch.long), 7, SCALE, 0, True)
    assert out.shape == (0, 3, 7, 7)
    out.sum().backward()
    assert torch.equal(features.grad, torch.zeros_like(features))


def test_boxes_get_no_gradient():
    features, boxes, pair_idx = make_case()
    boxes.requires_grad_(True)
    features.requires_grad_(True)
    pair_union_roi_align(features, boxes, pair_idx, 2, SCALE, 0, True).sum().backward()
    assert boxes.grad is None and features.grad is not None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.half])
def test_low_precision_cpu_accumulates_in_fp32(dtype):
    features, boxes, pair_idx = make_case(seed=2)
    low = features.to(dtype)
    args = (boxes, pair_idx, 7, SCALE, 0, True)
    out, grad = forward_and_grad(fused, low, args)
    ref, ref_grad = forward_and_grad(fused, low.float(), args)
    assert out.dtype == dtype and grad.dtype == dtype
    # Inputs are exact in both runs: only the final rounding to `dtype` differs.
    eps = torch.finfo(dtype).eps
    assert_close(out.float(), ref, rtol=eps, atol=eps)
    assert_close(grad.float(), ref_grad, rtol=eps, atol=eps)


def test_autocast_cpu_bfloat16():
    features, boxes, pair_idx = make_case(seed=4)
    conv = torch.nn.Conv2d(3, 4, kernel_size=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = conv(features)
        out = pair_union_roi_align(x, boxes, pair_idx, 7, SCALE, 0, True)
        out_fp32 = pair_union_roi_align(features, boxes, pair_idx, 7, SCALE, 0, True)
    assert x.dtype == torch.bfloat16 and out.dtype == torch.bfloat16
    ref = pair_union_roi_align(x.detach().float(), boxes, pair_idx, 7, SCALE, 0, True)
    assert_close(out.detach().float(), ref, rtol=1 / 128, atol=1 / 128)
    out.float().square().sum().backward()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()
    # fp32 features stay fp32 (RoIAlign gains nothing from down-casting).
    assert out_fp32.dtype == torch.float32
    assert torch.equal(out_fp32, pair_union_roi_align(features, boxes, pair_idx, 7, SCALE, 0, True))


def _case_with(**changes):
    features, boxes, pair_idx = make_case(num_boxes=4, num_pairs=3)
    args = dict(features=features, boxes=boxes, pair_idx=pair_idx, output_size=3)
    args.update(changes)
    return args


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(features=torch.rand(3, 12, 15)), "features must be \\[B, C, H, W\\]"),
        (dict(features=torch.ones(2, 3, 12, 15, dtype=torch.long)), "features must be a floating-point"),
        (dict(boxes=torch.rand(4, 4)), "boxes must be \\[K, 5\\]"),
        (dict(pair_idx=torch.tensor([[0, 2, 1]])), "pair_idx must be \\[M, 2\\]"),
        (dict(pair_idx=torch.tensor([[0.0, 2.0]])), "pair_idx must be int64"),
        (dict(pair_idx=torch.tensor([[0, 4]])), "pair 0 = \\(0, 4\\) refers to a box outside \\[0, 4\\)"),
        (dict(pair_idx=torch.tensor([[0, 2], [0, 1]])), "pair 1 joins box 0 of image 0 and box 1 of image 1"),
        (dict(boxes=torch.tensor([[0.0, 1, 1, 5, 5]] * 3 + [[2.0, 1, 1, 5, 5]]), pair_idx=torch.tensor([[3, 3]])),
         "box 3 of pair 0 has batch index 2 but the batch has 2 images"),
        (dict(output_size=0), "output_size must be positive"),
    ],
)
def test_invalid_inputs_raise(changes, message):
    args = _case_with(**changes)
    with pytest.raises((ValueError, RuntimeError), match=message):
        pair_union_roi_align(args["features"], args["boxes"], args["pair_idx"], args["output_size"], SCALE, 0, True)


def test_missing_extension_has_a_clear_message(monkeypatch):
    from kern_d2.layers import pair_union

    features, boxes, pair_idx = make_case()
    pair_union._ops.cache_clear()
    monkeypatch.setitem(sys.modules, "kern_d2._C", None)
    with pytest.raises(ImportError, match="kern_d2._C is not built: run bash scripts/install.sh"):
        pair_union_roi_align(features, boxes, pair_idx, 3, SCALE, 0, True)


def test_non_square_output_size_is_rejected():
    features, boxes, pair_idx = make_case()
    with pytest.raises(ValueError, match="square"):
        pair_union_roi_align(features, boxes, pair_idx, (3, 4), SCALE, 0, True)


# ---------------------------------------------------------------------------------------- deterministic mode


@pytest.fixture
def deterministic_algorithms():
    """Restores the ``torch.use_deterministic_algorithms`` setting that a test changes."""
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


@pytest.mark.parametrize("warn_only", [False, True])
def test_deterministic_mode_avoids_the_cuda_backward(deterministic_algorithms, warn_only):
    # Stand-ins for feature tensors (the decision reads only these attributes), so it is tested without a GPU.
    cuda_features = SimpleNamespace(is_cuda=True, requires_grad=True)
    decide = pair_union._needs_deterministic_path
    torch.use_deterministic_algorithms(False)
    assert not decide(cuda_features)
    torch.use_deterministic_algorithms(True, warn_only=warn_only)
    assert decide(cuda_features)
    assert not decide(SimpleNamespace(is_cuda=False, requires_grad=True))  # the CPU backward is deterministic
    assert not decide(SimpleNamespace(is_cuda=True, requires_grad=False))  # forward only: no atomics
    with torch.no_grad():
        assert not decide(cuda_features)


def test_deterministic_path_runs_the_cpu_kernels(monkeypatch):
    features, boxes, pair_idx = make_case(seed=8)
    args = (boxes, pair_idx, 7, SCALE, 0, True)
    expected, expected_grad = forward_and_grad(fused, features, args)
    ops, devices = pair_union._ops(), []

    class Spy:
        def pair_union_roi_align(self, *inputs):
            devices.append({x.device.type for x in inputs[:3]})
            return ops.pair_union_roi_align(*inputs)

    monkeypatch.setattr(pair_union, "_ops", Spy)
    monkeypatch.setattr(pair_union, "_needs_deterministic_path", lambda features: True)
    out, grad = forward_and_grad(fused, features, args)
    assert devices == [{"cpu"}]
    assert torch.equal(out, expected) and torch.equal(grad, expected_grad)


# ---------------------------------------------------------------------------------------------------- CUDA


def on_cuda(args):
    return tuple(a.cuda() if torch.is_tensor(a) else a for a in args)


def cuda_case(**kwargs):
    """A case whose union patches span several 16 x 32 tiles of the CUDA kernels, with more channels than one
    block takes (64 per block)."""
    params = dict(batch=3, channels=70, height=60, width=90, num_boxes=24, num_pairs=150, image_size=(120, 180))
    params.update(kwargs)
    return make_case(**params)


@needs_cuda
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("output_size", [7, 14])
def test_cuda_matches_cpu_and_torchvision(aligned, sampling_ratio, output_size):
    features, boxes, pair_idx = cuda_case(seed=output_size + sampling_ratio)
    args = (boxes, pair_idx, output_size, 0.5, sampling_ratio, aligned)
    out, grad = forward_and_grad(fused, features, args)
    cuda_args = on_cuda(args)
    out_cuda, grad_cuda = forward_and_grad(fused, features.cuda(), cuda_args)
    ref_cuda, ref_grad_cuda = forward_and_grad(composite, features.cuda(), cuda_args)
    assert out_cuda.is_cuda and out_cuda.dtype == torch.float32
    # fp32 sums in another order (and nvcc's fused multiply-adds): on the H100, differences reach ~3e-5 on these
    # randn features of magnitude <= 5; the float64 test below checks the arithmetic itself tightly.
    tol = dict(rtol=1e-4, atol=5e-5)
    assert_close(out_cuda.cpu(), out, **tol)
    assert_close(grad_cuda.cpu(), grad, **tol)
    assert_close(out_cuda, ref_cuda, **tol)
    assert_close(grad_cuda, ref_grad_cuda, **tol)


@needs_cuda
def test_cuda_float64_and_large_output_size():
    # output_size 32 in float64 needs more than 48 KiB of shared memory per block (the opt-in path).
    features, boxes, pair_idx = cuda_case(channels=5, num_pairs=40, dtype=torch.float64, seed=3)
    for size in (3, 32):
        args = (boxes, pair_idx, size, 0.5, 0, True)
        out, grad = forward_and_grad(fused, features, args)
        out_cuda, grad_cuda = forward_and_grad(fused, features.cuda(), on_cuda(args))
        assert_close(out_cuda.cpu(), out, rtol=1e-12, atol=1e-12)
        assert_close(grad_cuda.cpu(), grad, rtol=1e-12, atol=1e-12)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.half])
def test_cuda_low_precision(dtype):
    features, boxes, pair_idx = cuda_case(seed=8)
    low = features.to(dtype).cuda()
    args = (boxes.cuda(), pair_idx.cuda(), 7, 0.5, 0, True)
    out, grad = forward_and_grad(fused, low, args)
    ref, ref_grad = forward_and_grad(fused, low.float(), args)
    assert out.dtype == dtype and grad.dtype == dtype
    eps = torch.finfo(dtype).eps
    assert_close(out.float(), ref, rtol=eps, atol=eps)
    assert_close(grad.float(), ref_grad, rtol=eps, atol=eps)
    # The same on the CPU kernel, within rounding of the low-precision result.
    cpu_out, cpu_grad = forward_and_grad(fused, low.cpu(), (boxes, pair_idx, 7, 0.5, 0, True))
    assert_close(out.cpu().float(), cpu_out.float(), rtol=2 * eps, atol=2 * eps)
    assert_close(grad.cpu().float(), cpu_grad.float(), rtol=2 * eps, atol=2 * eps)


@needs_cuda
def test_cuda_autocast_runs_in_input_dtype():
    features, boxes, pair_idx = cuda_case(seed=6)
    features, boxes, pair_idx = features.cuda(), boxes.cuda(), pair_idx.cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out_bf16 = pair_union_roi_align(features.bfloat16(), boxes, pair_idx, 7, 0.5, 0, True)
        out_fp32 = pair_union_roi_align(features, boxes, pair_idx, 7, 0.5, 0, True)
    assert out_bf16.dtype == torch.bfloat16 and out_fp32.dtype == torch.float32
    assert torch.equal(out_fp32, pair_union_roi_align(features, boxes, pair_idx, 7, 0.5, 0, True))


@needs_cuda
def test_cuda_gradcheck_float64_and_empty_pairs():
    features, boxes, pair_idx = make_case(
        batch=2, channels=2, height=5, width=6, num_boxes=6, num_pairs=5, image_size=(20, 24), dtype=torch.float64
    )
    features = features.cuda().requires_grad_(True)
    boxes, pair_idx = boxes.cuda(), pair_idx.cuda()

    def op(x):
        return pair_union_roi_align(x, boxes, pair_idx, 3, SCALE, 0, True)

    assert torch.autograd.gradcheck(op, (features,))
    assert torch.autograd.gradgradcheck(op, (features,))
    empty = pair_union_roi_align(features, boxes, pair_idx[:0], 3, SCALE, 0, True)
    assert empty.shape == (0, 2, 3, 3)
    empty.sum().backward()
    assert torch.equal(features.grad, torch.zeros_like(features))


@needs_cuda
def test_cuda_deterministic_mode_gives_reproducible_gradients(deterministic_algorithms):
    features, boxes, pair_idx = on_cuda(cuda_case(seed=9))
    args = (boxes, pair_idx, 7, SCALE, 0, True)
    expected, expected_grad = forward_and_grad(fused, features, args)
    torch.use_deterministic_algorithms(True)
    with torch.no_grad():  # the forward alone stays on the CUDA kernels (deterministic)
        assert torch.equal(pair_union_roi_align(features, *args), expected)
    first, first_grad = forward_and_grad(fused, features, args)
    second, second_grad = forward_and_grad(fused, features, args)
    assert torch.equal(first, second) and torch.equal(first_grad, second_grad)
    assert_close(first, expected, rtol=1e-5, atol=1e-5)
    assert_close(first_grad, expected_grad, rtol=1e-5, atol=1e-5)
