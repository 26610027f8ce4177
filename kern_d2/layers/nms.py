"""Non-maximum suppression that stops at the first ``max_keep`` kept boxes (``torch.ops.kern_d2.nms_topk``).

Same results as ``torchvision.ops.nms(...)[:max_keep]`` (and ``batched_nms``) when no two scores are equal; equal
scores are visited lower index first. Detection post-processing keeps only the best few boxes of thousands of
candidates: the kernels stop once they have them, where torchvision's CUDA NMS walks every box serially.
"""
import math

import torch

from .compiled_ops import fake_kernel, load_ops

__all__ = ["nms_topk", "batched_nms_topk"]


@fake_kernel("kern_d2::nms_topk")
def _nms_topk_fake(boxes, scores, iou_threshold, max_keep):
    """int64 [K] on the device of ``boxes``, K data-dependent in [0, min(max_keep, N)]."""
    op = "nms_topk"
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{op}: boxes must be [N, 4] (x1, y1, x2, y2), got shape {tuple(boxes.shape)}")
    if not boxes.is_floating_point():
        raise ValueError(f"{op}: boxes must be a floating-point tensor, got {boxes.dtype}")
    if scores.dim() != 1:
        raise ValueError(f"{op}: scores must be [N] (one per box), got shape {tuple(scores.shape)}")
    torch._check(
        scores.shape[0] == boxes.shape[0],
        lambda: f"{op}: scores must be [N] with N = {boxes.shape[0]} (one per box), got shape {tuple(scores.shape)}",
    )
    if scores.dtype != boxes.dtype:
        raise ValueError(f"{op}: scores must have the dtype of boxes ({boxes.dtype}), got {scores.dtype}")
    if scores.device != boxes.device:
        raise ValueError(f"{op}: scores must be on the device of boxes ({boxes.device}), got {scores.device}")
    if not math.isfinite(iou_threshold):
        raise ValueError(f"{op}: iou_threshold must be finite, got {iou_threshold}")
    torch._check(max_keep >= 0, lambda: f"{op}: max_keep must be >= 0, got {max_keep}")
    bound = max_keep if isinstance(max_keep, int) else None
    if bound is not None and isinstance(boxes.shape[0], int):
        bound = min(bound, boxes.shape[0])
    count = torch.library.get_ctx().new_dynamic_size(max=bound)
    return boxes.new_empty((count,), dtype=torch.int64)


def nms_topk(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, max_keep: int) -> torch.Tensor:
    """
    Greedy NMS (IoU > iou_threshold suppresses) that stops after ``max_keep`` kept boxes.

    Args:
        boxes: [N, 4] XYXY, floating point.
        scores: [N] on the device of ``boxes``. Floating-point boxes and scores are both converted to their promoted
            dtype, at least float32 (the op wants one dtype; fp32 boxes come with bf16 scores under autocast).
    Returns:
        int64 [min(max_keep, kept)]: indices of the kept boxes by descending score. On CUDA the output size is read
        back from the device (one synchronisation).
    """
    if boxes.is_floating_point() and scores.is_floating_point():
        # At least float32, as torchvision's autocast NMS: half-precision coordinates are too coarse for IoUs
        # (and for batched_nms_topk's category shifts).
        dtype = torch.promote_types(torch.promote_types(boxes.dtype, scores.dtype), torch.float32)
        boxes, scores = boxes.to(dtype), scores.to(dtype)
    return load_ops().nms_topk(boxes, scores, float(iou_threshold), int(max_keep))


def batched_nms_topk(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float, max_keep: int
) -> torch.Tensor:
    """
    Per-category :func:`nms_topk`: boxes of different ``idxs`` never suppress each other. Each category's boxes are
    shifted by idxs * (largest coordinate + 1) so that categories cannot overlap, and one NMS runs on them all (the
    shift of torchvision's ``batched_nms``).

    Args:
        boxes: [N, 4] XYXY; scores: [N]; idxs: [N] integer categories.
    Returns:
        int64 [min(max_keep, kept)]: indices by descending score, as ``torchvision.ops.batched_nms(...)[:max_keep]``.
    """
    if boxes.numel() == 0:
        return nms_topk(boxes, scores, iou_threshold, max_keep)  # no largest coordinate; checks the arguments
    if boxes.is_floating_point():
        boxes = boxes.to(torch.promote_types(boxes.dtype, torch.float32))  # the shifts need float32 precision
    offsets = idxs.to(boxes) * (boxes.max() + 1)
    return nms_topk(boxes + offsets[:, None], scores, iou_threshold, max_keep)
