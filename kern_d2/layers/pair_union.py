"""Pair-union ops of kern_d2._C (``torch.ops.kern_d2.*``) and their plain-PyTorch helpers.

A relation pair (subject, object) is described by its *union box*: x1 = min, y1 = min, x2 = max, y2 = max of the
two boxes. The compiled ops work on the union box without materialising it:

- :func:`pair_union_roi_align`: RoIAlign (torchvision semantics) of the union box of every pair, with a backward.
  The CUDA backward accumulates with atomic adds (run-to-run differences in the last bits): under
  ``torch.use_deterministic_algorithms(True)`` a CUDA call that needs a gradient runs on the CPU kernels instead
  (deterministic), as torchvision's ``roi_align`` falls back to a deterministic path.
- :func:`box_pair_masks`: the subject and object rectangles drawn inside the union box (the "spatial map").
"""
from typing import Tuple, Union

import torch

from .compiled_ops import fake_kernel, load_ops

__all__ = [
    "box_pair_masks",
    "box_pair_masks_reference",
    "pair_union_roi_align",
    "union_boxes",
]


# ``torch.ops.kern_d2`` with the fake kernels registered (an lru_cache: ``_ops.cache_clear()`` retries the import).
_ops = load_ops


def _box_tensor(boxes) -> torch.Tensor:
    """The tensor of a detectron2 ``Boxes`` (or the tensor itself)."""
    return boxes.tensor if hasattr(boxes, "tensor") else boxes


def _check_layout(op: str, boxes: torch.Tensor, box_width: int, pair_idx: torch.Tensor, size: int, size_name: str):
    """Shape, dtype and device checks done before entering C++ (they need no device sync). The kernels check
    again and also check index ranges."""
    columns = "(x1, y1, x2, y2)" if box_width == 4 else "(batch index, x1, y1, x2, y2)"
    if boxes.dim() != 2 or boxes.shape[1] != box_width:
        raise ValueError(f"{op}: boxes must be [K, {box_width}] {columns}, got shape {tuple(boxes.shape)}")
    if not boxes.is_floating_point():
        raise ValueError(f"{op}: boxes must be a floating-point tensor, got {boxes.dtype}")
    if pair_idx.dim() != 2 or pair_idx.shape[1] != 2:
        raise ValueError(f"{op}: pair_idx must be [M, 2] (subject row, object row), got shape {tuple(pair_idx.shape)}")
    if pair_idx.dtype != torch.int64:
        raise ValueError(f"{op}: pair_idx must be int64, got {pair_idx.dtype}")
    if boxes.device != pair_idx.device:
        raise ValueError(f"{op}: boxes and pair_idx must be on the same device, got {boxes.device} and {pair_idx.device}")
    if size <= 0:
        raise ValueError(f"{op}: {size_name} must be positive, got {size}")


def _check_features(op: str, features: torch.Tensor, boxes: torch.Tensor):
    """Feature-map checks of the union RoIAlign, shared by the wrapper and its fake kernel (no device sync)."""
    if features.dim() != 4:
        raise ValueError(f"{op}: features must be [B, C, H, W], got shape {tuple(features.shape)}")
    if not features.is_floating_point():
        raise ValueError(f"{op}: features must be a floating-point tensor, got {features.dtype}")
    if features.device != boxes.device:
        raise ValueError(
            f"{op}: features and boxes must be on the same device, got {features.device} and {boxes.device}"
        )


# ------------------------------------------------------------------------------------- fake kernels
# Shapes, dtypes and devices of the ops' outputs for FakeTensor tracing (see compiled_ops).


def _check_spatial_size(op: str, num_pairs, height, width):
    # Only a problem when there are pairs to pool; the pair count is tested last (and as a deferred check) since
    # under tracing it can be a data-dependent size.
    if height <= 0 or width <= 0:
        torch._check(num_pairs == 0, lambda: f"{op}: features have an empty spatial size {height}x{width}")


@fake_kernel("kern_d2::pair_union_roi_align")
def _pair_union_roi_align_fake(features, boxes, pair_idx, output_size, spatial_scale, sampling_ratio, aligned):
    """[M, C, n, n] in the dtype and on the device of ``features``."""
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
    _check_layout("box_pair_masks", boxes, 4, pair_idx, size, "size")
    return boxes.new_empty((pair_idx.shape[0], 2, size, size), dtype=torch.float32)


def union_boxes(boxes: torch.Tensor, pair_idx: torch.Tensor) -> torch.Tensor:
    """
    Args:
        boxes: [K, 4] XYXY boxes (or ``Boxes``).
        pair_idx: int64 [M, 2] (subject row, object row) into ``boxes``.

    Returns:
        [M, 4] XYXY union box of each pair.
    """
    boxes = _box_tensor(boxes)
    subject, object_ = boxes[pair_idx[:, 0]], boxes[pair_idx[:, 1]]
    return torch.cat([torch.minimum(subject[:, :2], object_[:, :2]), torch.maximum(subject[:, 2:], object_[:, 2:])], 1)


def box_pair_masks(boxes: torch.Tensor, pair_idx: torch.Tensor, size: int) -> torch.Tensor:
    """
    Subject and object rectangles of each pair, drawn inside the pair's union box rescaled to a size x size grid.

    Cell (r, c) covers [u_x1 + c*w/size, u_x1 + (c+1)*w/size) x [u_y1 + r*h/size, u_y1 + (r+1)*h/size) of the
    union box (u_x1, u_y1, u_x2, u_y2), w = u_x2 - u_x1, h = u_y2 - u_y1. It is 1 in a box's channel when the
    cell centre lies inside the box, borders included. The test is evaluated without a division, as
    ``size * (x1 - u_x1) <= (c + 0.5) * w <= size * (x2 - u_x1)`` (likewise for rows with y1, y2, h), in float64
    for float64 boxes and in float32 otherwise, so a degenerate union box (w == 0 or h == 0) counts the whole
    axis as inside. :func:`box_pair_masks_reference` computes the same in plain PyTorch.

    Args:
        boxes: [K, 4] XYXY boxes of any floating dtype (or ``Boxes``).
        pair_idx: int64 [M, 2] (subject row, object row) into ``boxes``.
        size: side of the grid.

    Returns:
        float32 [M, 2, size, size]: channel 0 the subject, channel 1 the object. Not differentiable.
    """
    boxes = _box_tensor(boxes)
    _check_layout("box_pair_masks", boxes, 4, pair_idx, int(size), "size")
    return _ops().box_pair_masks(boxes, pair_idx, int(size))


def box_pair_masks_reference(boxes: torch.Tensor, pair_idx: torch.Tensor, size: int) -> torch.Tensor:
    """Plain-PyTorch :func:`box_pair_masks` (same cells, bit for bit): for when the extension is not at hand and
    as the composite baseline of the benchmark."""
    boxes = _box_tensor(boxes)
    dtype = torch.float64 if boxes.dtype == torch.float64 else torch.float32
    boxes = boxes.to(dtype)
    union = union_boxes(boxes, pair_idx)
    centres = torch.arange(size, dtype=dtype, device=boxes.device) + 0.5
    masks = []
    for box in (boxes[pair_idx[:, 0]], boxes[pair_idx[:, 1]]):
        inside = []
        for lo, hi in ((1, 3), (0, 2)):  # rows from y, columns from x
            centre = centres * (union[:, hi] - union[:, lo])[:, None]  # [M, size]
            start = ((box[:, lo] - union[:, lo]) * size)[:, None]
            end = ((box[:, hi] - union[:, lo]) * size)[:, None]
            inside.append((start <= centre) & (centre <= end))
        masks.append(inside[0][:, :, None] & inside[1][:, None, :])
    return torch.stack(masks, dim=1).to(torch.float32)


def _square_size(output_size: Union[int, Tuple[int, int]]) -> int:
    if isinstance(output_size, int):
        return output_size
    output_size = tuple(output_size)
    if len(output_size) != 2 or output_size[0] != output_size[1]:
        raise ValueError(f"pair_union_roi_align: output_size must be an int or a square (n, n), got {output_size}")
    return int(output_size[0])


def pair_union_roi_align(
    features: torch.Tensor,
    boxes: torch.Tensor,
    pair_idx: torch.Tensor,
    output_size: Union[int, Tuple[int, int]],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> torch.Tensor:
    """
    RoIAlign over the union box of each pair: equal to ``torchvision.ops.roi_align(features, union_rois,
    output_size, spatial_scale, sampling_ratio, aligned)`` (same defaults), without building ``union_rois``.
    Differentiable w.r.t. ``features`` (twice); the boxes get no gradient. Half/bfloat16 features run natively
    with fp32 accumulation (also under autocast). Under ``torch.use_deterministic_algorithms(True)``, CUDA features
    that need a gradient are pooled by the CPU kernels, whose backward is deterministic (slower: host copies).

    Args:
        features: [B, C, H, W].
        boxes: [K, 5] rows (batch index, x1, y1, x2, y2) in image coordinates, any floating dtype.
        pair_idx: int64 [M, 2] (subject row, object row) into ``boxes``; both boxes of a pair in the same image.
        output_size: side n of the n x n output (or a square (n, n)).
        spatial_scale: feature-map scale relative to the image coordinates of the boxes (1 / stride).
        sampling_ratio: samples per bin along each axis; <= 0 for ceil(bin size).
        aligned: shift the box by -0.5 pixel (detectron2's ROIAlignV2).

    Returns:
        [M, C, n, n] in the dtype of ``features``.
    """
    _check_features("pair_union_roi_align", features, boxes)
    size = _square_size(output_size)
    _check_layout("pair_union_roi_align", boxes, 5, pair_idx, size, "output_size")
    args = (size, float(spatial_scale), int(sampling_ratio), bool(aligned))
    if _needs_deterministic_path(features):
        return _pair_union_roi_align_deterministic(features, boxes, pair_idx, *args)
    return _ops().pair_union_roi_align(features, boxes, pair_idx, *args)


def _needs_deterministic_path(features: torch.Tensor) -> bool:
    """Whether :func:`pair_union_roi_align` must avoid the CUDA kernels: under
    ``torch.use_deterministic_algorithms(True)`` (warn-only too), for CUDA features that will get a gradient. Only
    the CUDA backward is nondeterministic (atomic adds); the CUDA forward and the CPU kernels are deterministic."""
    return (
        torch.are_deterministic_algorithms_enabled()
        and features.is_cuda
        and features.requires_grad
        and torch.is_grad_enabled()
    )


def _pair_union_roi_align_deterministic(features: torch.Tensor, boxes: torch.Tensor, pair_idx: torch.Tensor, *args):
    """[M, C, n, n] on the device of ``features``: the op run by its CPU kernels, whose backward is deterministic
    (each thread owns whole channel planes of the gradient), with autograd through the copies. Same results up to
    rounding, twice differentiable; slow (the features and their gradient cross to the host), so only for
    ``torch.use_deterministic_algorithms(True)``. (torchvision's pure-PyTorch ``roi_align`` is no substitute: it
    differs for samples outside the map and gives NaN gradients for empty boxes with adaptive sampling.)"""
    cpu = torch.device("cpu")
    pooled = _ops().pair_union_roi_align(features.to(cpu), boxes.to(cpu), pair_idx.to(cpu), *args)
    return pooled.to(features.device)
