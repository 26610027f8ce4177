"""Registration of the compiled ops (kern_d2._C): schema, autograd and fake kernels checked by
torch.library.opcheck, and torch.compile(fullgraph=True) through PairUnionPooler against eager."""
import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounterWithBackend
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.testing import assert_close

from kern_d2.layers import PairUnionPooler, pair_union_roi_align
from kern_d2.layers.compiled_ops import fake_kernel, load_ops

from tests.helpers.pair_union_cases import CANONICAL, make_batch, make_case, pooled_with_grads

# All of opcheck's checks (its default, spelled out so that a new default does not pass unnoticed).
ALL_CHECKS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
DTYPES = [torch.float32, torch.float64]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# ------------------------------------------------------------------------------------------------ opcheck


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_pairs, sampling_ratio, aligned", [(7, 2, True), (5, 0, False), (0, 0, True)])
def test_opcheck_pair_union_roi_align(dtype, num_pairs, sampling_ratio, aligned):
    features, boxes, pair_idx = make_case(dtype=dtype)
    args = (features.requires_grad_(True), boxes, pair_idx[:num_pairs], 3, 0.25, sampling_ratio, aligned)
    torch.library.opcheck(load_ops().pair_union_roi_align, args, test_utils=ALL_CHECKS)


@pytest.mark.parametrize("dtype", DTYPES)
def test_opcheck_pair_union_roi_align_backward(dtype):
    """The backward op with a grad that requires grad: its own autograd (double backward) is checked too."""
    features, boxes, pair_idx = make_case(num_pairs=6, dtype=dtype)
    grad = torch.randn(6, features.shape[1], 4, 4, dtype=dtype, generator=torch.Generator().manual_seed(2))
    args = (grad.requires_grad_(True), boxes, pair_idx, 4, 0.25, 2, True, *features.shape)
    torch.library.opcheck(load_ops()._pair_union_roi_align_backward, args, test_utils=ALL_CHECKS)


@pytest.mark.parametrize("dtype", DTYPES)
def test_opcheck_box_pair_masks(dtype):
    _, boxes, pair_idx = make_case(num_pairs=8, dtype=dtype)
    args = (boxes[:, 1:].detach().requires_grad_(True), pair_idx, 5)
    torch.library.opcheck(load_ops().box_pair_masks, args, test_utils=ALL_CHECKS)


# ------------------------------------------------------------------------------------------- fake kernels


def test_fake_kernels_give_shape_dtype_and_device():
    ops = load_ops()
    with FakeTensorMode():
        features = torch.empty(2, 6, 10, 12, dtype=torch.bfloat16)
        boxes = torch.empty(9, 5, dtype=torch.float64)
        pair_idx = torch.empty(11, 2, dtype=torch.int64)
        pooled = ops.pair_union_roi_align(features, boxes, pair_idx, 4, 0.5, 0, True)
        grad = ops._pair_union_roi_align_backward(pooled.half(), boxes, pair_idx, 4, 0.5, 0, True, 2, 6, 10, 12)
        masks = ops.box_pair_masks(boxes[:, 1:], pair_idx, 7)
    assert (pooled.shape, pooled.dtype) == ((11, 6, 4, 4), torch.bfloat16)
    assert (grad.shape, grad.dtype) == ((2, 6, 10, 12), torch.float16)
    assert (masks.shape, masks.dtype) == ((11, 2, 7, 7), torch.float32)
    assert pooled.device == grad.device == masks.device == torch.device("cpu")


def _meta_args(op, **changes):
    """Valid arguments of each op (sizes B=2, C=3, H=10, W=12, K=9, M=11, n=4), with ``changes`` applied, as meta
    tensors: the op then runs its fake kernel."""
    args = {
        "pair_union_roi_align": dict(
            features=torch.empty(2, 3, 10, 12), boxes=torch.empty(9, 5), pair_idx=torch.empty(11, 2, dtype=torch.long),
            output_size=4, spatial_scale=0.5, sampling_ratio=0, aligned=True,
        ),
        "_pair_union_roi_align_backward": dict(
            grad=torch.empty(11, 3, 4, 4), boxes=torch.empty(9, 5), pair_idx=torch.empty(11, 2, dtype=torch.long),
            output_size=4, spatial_scale=0.5, sampling_ratio=0, aligned=True, batch_size=2, channels=3, height=10,
            width=12,
        ),
        "box_pair_masks": dict(boxes=torch.empty(9, 4), pair_idx=torch.empty(11, 2, dtype=torch.long), size=4),
    }[op]
    args.update(changes)
    return [a.to("meta") if torch.is_tensor(a) else a for a in args.values()]


@pytest.mark.parametrize(
    "op, changes, message",
    [
        ("pair_union_roi_align", dict(features=torch.empty(3, 10, 12)), r"features must be \[B, C, H, W\]"),
        ("pair_union_roi_align", dict(features=torch.empty(2, 3, 10, 12, dtype=torch.int32)), "floating-point"),
        ("pair_union_roi_align", dict(boxes=torch.empty(9, 4)), r"boxes must be \[K, 5\]"),
        ("pair_union_roi_align", dict(pair_idx=torch.empty(11, 2, dtype=torch.int32)), "pair_idx must be int64"),
        ("pair_union_roi_align", dict(output_size=0), "output_size must be positive"),
        ("pair_union_roi_align", dict(features=torch.empty(2, 3, 0, 12)), "empty spatial size"),
        ("_pair_union_roi_align_backward", dict(grad=torch.empty(11, 3, 5, 5)), r"grad must be \[M, C, output_size"),
        ("_pair_union_roi_align_backward", dict(channels=4), r"grad must be \[M, C, output_size"),
        ("_pair_union_roi_align_backward", dict(pair_idx=torch.empty(11, 3).long()), r"pair_idx must be \[M, 2\]"),
        ("_pair_union_roi_align_backward", dict(width=0), "empty spatial size"),
        ("box_pair_masks", dict(boxes=torch.empty(9, 5)), r"boxes must be \[K, 4\]"),
        ("box_pair_masks", dict(boxes=torch.empty(9, 4, dtype=torch.int64)), "floating-point"),
        ("box_pair_masks", dict(size=-1), "size must be positive"),
    ],
)
def test_fake_kernels_reject_bad_layouts(op, changes, message):
    args = _meta_args(op, **changes)
    with pytest.raises((ValueError, RuntimeError), match=message):
        getattr(load_ops(), op)(*args)


def test_fake_kernels_accept_no_pairs_on_empty_features():
    args = _meta_args("pair_union_roi_align", features=torch.empty(2, 3, 0, 0), pair_idx=torch.empty(0, 2).long())
    assert load_ops().pair_union_roi_align(*args).shape == (0, 3, 4, 4)


def test_fake_kernel_declared_after_loading_is_registered_at_once():
    load_ops()
    with torch.library._scoped_library("kern_d2", "FRAGMENT") as lib:
        lib.define("_fake_kernel_test_op(Tensor x, int n) -> Tensor")
        lib.impl("_fake_kernel_test_op", lambda x, n: x.sum(1, keepdim=True).expand(-1, n).clone(), "CPU")

        @fake_kernel("kern_d2::_fake_kernel_test_op")
        def _fake(x, n):
            return x.new_empty((x.shape[0], n))

        torch.library.opcheck(
            torch.ops.kern_d2._fake_kernel_test_op, (torch.randn(3, 2), 4), test_utils=("test_faketensor",)
        )
        with pytest.raises(ValueError, match="already has a fake kernel"):
            fake_kernel("kern_d2::_fake_kernel_test_op")(lambda x, n: x)
    with pytest.raises(ValueError, match="expected an op name 'kern_d2::<op>'"):
        fake_kernel("torchvision::roi_align")


# ----------------------------------------------------------------------------------------------- compile


@pytest.mark.parametrize("num_levels", [1, 3])
def test_compiled_pair_union_pooler_matches_eager(num_levels):
    """One graph (fullgraph) holding one op call per level, with the output and the gradients of eager. Several
    levels pick the pairs of each level with nonzero(), whose size depends on the data: dynamo must capture it."""
    features, boxes, pair_idxs = make_batch(num_levels=num_levels)
    scales = [1 / 2 ** (2 + level) for level in range(num_levels)]
    pooler = PairUnionPooler(7, scales, sampling_ratio=0, aligned=True, **CANONICAL)
    counter = CompileCounterWithBackend("aot_eager")
    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
        compiled = torch.compile(pooler, fullgraph=True, backend=counter)
        out, grads = pooled_with_grads(compiled, features, boxes, pair_idxs)
    ref, ref_grads = pooled_with_grads(pooler, features, boxes, pair_idxs)

    assert counter.frame_count == 1
    op = torch.ops.kern_d2.pair_union_roi_align
    op_calls = [n for n in counter.graphs[0].graph.nodes if n.target in (op, op.default)]
    assert len(op_calls) == num_levels
    assert out.shape == (16, 4, 7, 7)
    assert_close(out, ref)
    for grad, ref_grad in zip(grads, ref_grads):
        assert grad.abs().sum() > 0
        assert_close(grad, ref_grad)


def test_dynamic_feature_map_sizes_compile_once():
    def pooled_sum(features, boxes, pair_idx):
        return pair_union_roi_align(features, boxes, pair_idx, 3, 0.25, 2, True).square().sum()

    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(pooled_sum, backend=counter, dynamic=True, fullgraph=True)
    for height, width in [(12, 15), (16, 13)]:
        features, boxes, pair_idx = make_case(height=height, width=width)
        features.requires_grad_(True)
        (grad,) = torch.autograd.grad(compiled(features, boxes, pair_idx), features)
        (ref_grad,) = torch.autograd.grad(pooled_sum(features, boxes, pair_idx), features)
        assert_close(grad, ref_grad)
    assert counter.frame_count == 1
