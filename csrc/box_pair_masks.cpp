// Schema, dispatch and autograd registration of kern_d2::box_pair_masks (kernels: cpu/, cuda/).
#include "box_pair_masks.h"

#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace kern_d2 {

at::Tensor box_pair_masks(const at::Tensor& boxes, const at::Tensor& pair_idx, int64_t size) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("kern_d2::box_pair_masks", "")
                       .typed<decltype(box_pair_masks)>();
  return op.call(boxes, pair_idx, size);
}

namespace detail {

void check_box_pair_masks_args(const at::Tensor& boxes, const at::Tensor& pair_idx, int64_t size) {
  TORCH_CHECK(
      boxes.dim() == 2 && boxes.size(1) == 4,
      "box_pair_masks: boxes must be [K, 4] (x1, y1, x2, y2), got shape ",
      boxes.sizes());
  TORCH_CHECK(
      at::isFloatingType(boxes.scalar_type()),
      "box_pair_masks: boxes must be a floating-point tensor, got ",
      boxes.scalar_type());
  TORCH_CHECK(
      pair_idx.dim() == 2 && pair_idx.size(1) == 2,
      "box_pair_masks: pair_idx must be [M, 2] (subject row, object row), got shape ",
      pair_idx.sizes());
  TORCH_CHECK(
      pair_idx.scalar_type() == at::kLong,
      "box_pair_masks: pair_idx must be int64, got ",
      pair_idx.scalar_type());
  TORCH_CHECK(
      boxes.device() == pair_idx.device(),
      "box_pair_masks: boxes and pair_idx must be on the same device, got ",
      boxes.device(),
      " and ",
      pair_idx.device());
  TORCH_CHECK(size > 0, "box_pair_masks: size must be positive, got ", size);
}

} // namespace detail

namespace {

// The masks are constant inputs of the network: nothing flows back to the boxes.
at::Tensor box_pair_masks_autograd(const at::Tensor& boxes, const at::Tensor& pair_idx, int64_t size) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return box_pair_masks(boxes, pair_idx, size);
}

} // namespace

TORCH_LIBRARY_FRAGMENT(kern_d2, m) {
  m.def("box_pair_masks(Tensor boxes, Tensor pair_idx, int size) -> Tensor");
}

TORCH_LIBRARY_IMPL(kern_d2, Autograd, m) {
  m.impl("box_pair_masks", TORCH_FN(box_pair_masks_autograd));
}

} // namespace kern_d2
