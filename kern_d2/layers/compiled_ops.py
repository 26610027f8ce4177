"""Loader of the compiled ops of kern_d2._C (``torch.ops.kern_d2.*``) and their fake kernels.

Importing kern_d2._C registers the ops' schemas, CPU/CUDA kernels and autograd in C++ (TORCH_LIBRARY). Their fake
(meta) kernels, which give the output's shape, dtype and device without data so that FakeTensor tracing
(torch.compile, torch.export, make_fx) goes through the ops, are written in Python and can only be registered once
the ops exist, i.e. after the import. :func:`load_ops` does both and returns ``torch.ops.kern_d2``.

An op module declares the fake kernels of its ops at import time with :func:`fake_kernel` (this needs no built
extension) and calls :func:`load_ops` where it needs the ops; ``load_ops`` registers every declared fake kernel
the first time it runs, and ``fake_kernel`` registers right away when the ops are already loaded (this module
loads them at import when the extension is built, so that nothing is registered while torch.compile traces)::

    from .compiled_ops import fake_kernel, load_ops

    @fake_kernel("kern_d2::my_op")
    def _my_op_fake(x, n):
        return x.new_empty((x.shape[0], n))

    def my_op(x, n):
        return load_ops().my_op(x, n)

The fake kernels of the pair-union ops (:mod:`kern_d2.layers.pair_union`) are declared here. Like the C++
kernels, a fake kernel checks what it can without data (shapes, dtypes, devices); the index ranges need the data
and are left to the kernels.
"""
import functools
from typing import Callable, Dict, Set

import torch

__all__ = ["fake_kernel", "load_ops"]

_NAMESPACE = "kern_d2"

# Qualified op name ("kern_d2::op") -> fake kernel, as declared by the op modules.
_declared_fakes: Dict[str, Callable] = {}
# Those already handed to torch.library.
_registered_fakes: Set[str] = set()
# Whether load_ops() has imported the extension, i.e. the ops exist.
_ops_loaded = False


def fake_kernel(qualname: str) -> Callable[[Callable], Callable]:
    """
    Decorator declaring ``fn`` as the fake kernel of the compiled op ``qualname`` (``"kern_d2::name"``; same
    signature as the op). It is registered with ``torch.library.register_fake`` by :func:`load_ops`, or at once
    when the ops are already loaded.
    """
    namespace, _, name = qualname.partition("::")
    if namespace != _NAMESPACE or not name:
        raise ValueError(f"fake_kernel: expected an op name '{_NAMESPACE}::<op>', got {qualname!r}")

    def declare(fn: Callable) -> Callable:
        previous = _declared_fakes.get(qualname)
        if previous is not None and previous is not fn:
            raise ValueError(
                f"fake_kernel: {qualname} already has a fake kernel, {previous.__module__}.{previous.__qualname__}"
            )
        _declared_fakes[qualname] = fn
        if _ops_loaded:
            _register_declared_fakes()
        return fn

    return declare


def _register_declared_fakes():
    for qualname, fn in _declared_fakes.items():
        if qualname not in _registered_fakes:
            torch.library.register_fake(qualname, fn)
            _registered_fakes.add(qualname)


@functools.lru_cache(maxsize=None)
def load_ops():
    """``torch.ops.kern_d2``, after importing kern_d2._C (whose import registers the ops) and registering the
    declared fake kernels."""
    global _ops_loaded
    try:
        import kern_d2._C  # noqa: F401
    except ImportError as e:
        raise ImportError("kern_d2._C is not built: run bash scripts/install.sh") from e
    if not _ops_loaded:
        _ops_loaded = True
        _register_declared_fakes()
    return torch.ops.kern_d2


# ------------------------------------------------------------------------------------- pair-union fake kernels
# pair_union imports this module, hence the imports of its checks inside the functions.


def _check_spatial_size(op: str, num_pairs, height, width):
    # Only a problem when there are pairs to pool; the pair count is tested last (and as a deferred check) since
    # under tracing it can be a data-dependent size.
    if height <= 0 or width <= 0:
        torch._check(num_pairs == 0, lambda: f"{op}: features have an empty spatial size {height}x{width}")


@fake_kernel("kern_d2::pair_union_roi_align")
def _pair_union_roi_align_fake(features, boxes, pair_idx, output_size, spatial_scale, sampling_ratio, aligned):
    """[M, C, n, n] in the dtype and on the device of ``features``."""
    from .pair_union import _check_features, _check_layout

    op = "pair_union_roi_align"
    _check_features(op, features, boxes)
    _check_layout(op, boxes, 5, pair_idx, output_size, "output_size")
    _check_spatial_size(op, pair_idx.shape[0], features.shape[2], features.shape[3])
    return features.new_empty((pair_idx.shape[0], features.shape[1], output_size, output_size))


@fake_kernel("kern_d2::_pair_union_roi_align_backward")
def _pair_union_roi_align_backward_fake(
    grad, boxes, pair_idx, output_size, spatial_scale, sampling_ratio, aligned, batch_size, channels, height, width
):
    """Gradient of the features: [batch_size, channels, height, width] in the dtype and on the device of ``grad``."""
    from .pair_union import _check_layout

    op = "_pair_union_roi_align_backward"
    _check_layout(op, boxes, 5, pair_idx, output_size, "output_size")
    expected = (pair_idx.shape[0], channels, output_size, output_size)
    if grad.dim() != 4 or tuple(grad.shape) != expected:
        raise ValueError(
            f"{op}: grad must be [M, C, output_size, output_size] = {list(expected)}, got shape {tuple(grad.shape)}"
        )
    if not grad.is_floating_point():
        raise ValueError(f"{op}: grad must be a floating-point tensor, got {grad.dtype}")
    if grad.device != boxes.device:
        raise ValueError(f"{op}: grad and boxes must be on the same device, got {grad.device} and {boxes.device}")
    if any(size < 0 for size in (batch_size, channels, height, width)):  # no guard between symbolic sizes
        raise ValueError(f"{op}: negative features shape {[batch_size, channels, height, width]}")
    _check_spatial_size(op, pair_idx.shape[0], height, width)
    return grad.new_empty((batch_size, channels, height, width))


@fake_kernel("kern_d2::box_pair_masks")
def _box_pair_masks_fake(boxes, pair_idx, size):
    """float32 [M, 2, size, size] on the device of ``boxes``."""
    from .pair_union import _check_layout

    _check_layout("box_pair_masks", boxes, 4, pair_idx, size, "size")
    return boxes.new_empty((pair_idx.shape[0], 2, size, size), dtype=torch.float32)


# Load now when the extension is built, so that the fake kernels are in place before anything is traced:
# torch.compile traces through load_ops() (it ignores lru_cache) but cannot trace torch.library.register_fake.
# Without the extension, the ops' wrappers raise load_ops()'s error when called.
try:
    load_ops()
except ImportError:
    pass
