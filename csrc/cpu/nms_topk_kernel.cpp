// CPU kernel of kern_d2::nms_topk: the greedy loop over the boxes in score order, which stops at the max_keep-th
// kept box; each kept box suppresses the later boxes that overlap it.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "nms_topk.h"

namespace kern_d2 {
namespace {

at::Tensor nms_topk_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold, int64_t max_keep) {
  detail::check_nms_topk_args(boxes, scores, iou_threshold, max_keep);
  TORCH_CHECK(boxes.device().is_cpu(), "nms_topk (CPU kernel): boxes must be a CPU tensor, got ", boxes.device());
  const int64_t n = boxes.size(0);
  const int64_t capacity = std::min(n, max_keep);
  std::vector<int64_t> kept;
  kept.reserve(capacity);
  if (capacity > 0) {
    const at::Tensor order = std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "nms_topk_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const at::Tensor sorted = boxes.index_select(0, order).to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
      const acc_t* b = sorted.data_ptr<acc_t>();
      const int64_t* original = order.data_ptr<int64_t>();
      std::vector<char> removed(n, 0);
      for (int64_t i = 0; i < n && static_cast<int64_t>(kept.size()) < capacity; ++i) {
        if (removed[i]) {
          continue;
        }
        kept.push_back(original[i]);
        if (static_cast<int64_t>(kept.size()) == capacity) {
          break; // nothing after the last wanted box matters
        }
        for (int64_t j = i + 1; j < n; ++j) {
          if (!removed[j] && detail::iou_above(b + 4 * i, b + 4 * j, iou_threshold)) {
            removed[j] = 1;
          }
        }
      }
    });
  }
  auto out = at::empty({static_cast<int64_t>(kept.size())}, boxes.options().dtype(at::kLong));
  std::copy(kept.begin(), kept.end(), out.data_ptr<int64_t>());
  return out;
}

} // namespace

TORCH_LIBRARY_IMPL(kern_d2, CPU, m) {
  m.impl("nms_topk", TORCH_FN(nms_topk_cpu));
}

} // namespace kern_d2
