// kern_d2::nms_topk: greedy non-maximum suppression that stops after max_keep kept boxes.
//
// Semantics of torchvision.ops.nms: boxes XYXY, areas (x2 - x1) * (y2 - y1), a box is suppressed by a kept box of
// higher score when their IoU > iou_threshold. Boxes are visited in descending score order (stable: among equal
// scores the lower index first). Returns int64 [min(max_keep, kept)] indices of the kept boxes in keep order, i.e.
// nms_topk(b, s, t, k) == torchvision.ops.nms(b, s, t)[:k] when no two scores are equal.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>

namespace kern_d2 {
namespace detail {

// Shape, dtype, device and value checks shared by the CPU and CUDA kernels; they read no tensor data.
void check_nms_topk_args(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold, int64_t max_keep);

// a * b rounded once: on the device, the explicit intrinsic keeps nvcc from fusing the product into a following add
// (an FMA rounds once less), so that the CUDA IoUs equal the CPU ones bit for bit.
C10_HOST_DEVICE inline float product_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
C10_HOST_DEVICE inline double product_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

// Whether boxes a and b (x1, y1, x2, y2 in the compute type T: float for half inputs) overlap with IoU > threshold.
// Same arithmetic as torchvision's CPU kernel; the comparison is in double like there (a zero union gives NaN: kept).
template <typename T>
C10_HOST_DEVICE inline bool iou_above(const T* a, const T* b, double threshold) {
  const T left = a[0] > b[0] ? a[0] : b[0];
  const T top = a[1] > b[1] ? a[1] : b[1];
  const T right = a[2] < b[2] ? a[2] : b[2];
  const T bottom = a[3] < b[3] ? a[3] : b[3];
  const T width = right - left > T(0) ? right - left : T(0);
  const T height = bottom - top > T(0) ? bottom - top : T(0);
  const T inter = product_rn(width, height);
  const T area_a = product_rn(a[2] - a[0], a[3] - a[1]);
  const T area_b = product_rn(b[2] - b[0], b[3] - b[1]);
  return static_cast<double>(inter / (area_a + area_b - inter)) > threshold;
}

} // namespace detail
} // namespace kern_d2
