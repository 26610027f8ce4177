// Schema, argument checks and autograd registration of kern_d2::nms_topk (kernels: cpu/, cuda/; the fake kernel is
// registered from Python in kern_d2/layers/nms.py).
#include "nms_topk.h"

#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <cmath>

namespace kern_d2 {
namespace detail {

void check_nms_topk_args(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold, int64_t max_keep) {
  constexpr const char* op = "nms_topk";
  TORCH_CHECK(
      boxes.dim() == 2 && boxes.size(1) == 4, op, ": boxes must be [N, 4] (x1, y1, x2, y2), got shape ", boxes.sizes());
  TORCH_CHECK(
      at::isFloatingType(boxes.scalar_type()),
      op,
      ": boxes must be a floating-point tensor, got ",
      boxes.scalar_type());
  TORCH_CHECK(
      scores.dim() == 1 && scores.size(0) == boxes.size(0),
      op,
      ": scores must be [N] with N = ",
      boxes.size(0),
      " (one per box), got shape ",
      scores.sizes());
  TORCH_CHECK(
      scores.scalar_type() == boxes.scalar_type(),
      op,
      ": scores must have the dtype of boxes (",
      boxes.scalar_type(),
      "), got ",
      scores.scalar_type());
  TORCH_CHECK(
      scores.device() == boxes.device(),
      op,
      ": scores must be on the device of boxes (",
      boxes.device(),
      "), got ",
      scores.device());
  TORCH_CHECK(std::isfinite(iou_threshold), op, ": iou_threshold must be finite, got ", iou_threshold);
  TORCH_CHECK(max_keep >= 0, op, ": max_keep must be >= 0, got ", max_keep);
}

} // namespace detail

namespace {

// Indices are not differentiable: the op runs below autograd and its output never requires grad.
at::Tensor nms_topk_autograd(
    const at::Tensor& boxes,
    const at::Tensor& scores,
    double iou_threshold,
    int64_t max_keep) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("kern_d2::nms_topk", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, double, int64_t)>();
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(boxes, scores, iou_threshold, max_keep);
}

} // namespace

TORCH_LIBRARY_FRAGMENT(kern_d2, m) {
  m.def("nms_topk(Tensor boxes, Tensor scores, float iou_threshold, int max_keep) -> Tensor");
}

TORCH_LIBRARY_IMPL(kern_d2, Autograd, m) {
  m.impl("nms_topk", TORCH_FN(nms_topk_autograd));
}

} // namespace kern_d2
