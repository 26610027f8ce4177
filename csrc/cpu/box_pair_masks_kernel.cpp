// CPU kernel of kern_d2::box_pair_masks.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "box_pair_masks.h"
#include "pair_union_geometry.h"

namespace kern_d2 {
namespace {

template <typename T>
void draw_masks(const T* boxes, const int64_t* pairs, int64_t num_pairs, int size, float* masks) {
  const int64_t cells = static_cast<int64_t>(size) * size;
  at::parallel_for(0, num_pairs, 64, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      const T* boxes_of_pair[2] = {boxes + pairs[2 * m] * 4, boxes + pairs[2 * m + 1] * 4};
      const T* s = boxes_of_pair[0];
      const T* o = boxes_of_pair[1];
      const T ux1 = min_value(s[0], o[0]), uy1 = min_value(s[1], o[1]);
      const T ux2 = max_value(s[2], o[2]), uy2 = max_value(s[3], o[3]);
      for (int channel = 0; channel < 2; ++channel) {
        const T* b = boxes_of_pair[channel];
        float* mask = masks + (2 * m + channel) * cells;
        for (int r = 0; r < size; ++r) {
          const bool row_inside = cell_centre_inside(uy1, uy2, b[1], b[3], r, size);
          for (int c = 0; c < size; ++c) {
            mask[r * size + c] = (row_inside && cell_centre_inside(ux1, ux2, b[0], b[2], c, size)) ? 1.f : 0.f;
          }
        }
      }
    }
  });
}

at::Tensor box_pair_masks_cpu(const at::Tensor& boxes, const at::Tensor& pair_idx, int64_t size) {
  detail::check_box_pair_masks_args(boxes, pair_idx, size);
  TORCH_CHECK(boxes.is_cpu(), "box_pair_masks (CPU kernel): boxes must be a CPU tensor, got ", boxes.device());
  const int64_t num_pairs = pair_idx.size(0);
  const int64_t num_boxes = boxes.size(0);
  auto masks = at::empty({num_pairs, 2, size, size}, boxes.options().dtype(at::kFloat));
  if (num_pairs == 0) {
    return masks;
  }
  const auto pairs = pair_idx.contiguous();
  const int64_t* p = pairs.data_ptr<int64_t>();
  for (int64_t m = 0; m < num_pairs; ++m) {
    for (int k = 0; k < 2; ++k) {
      TORCH_CHECK(
          p[2 * m + k] >= 0 && p[2 * m + k] < num_boxes,
          "box_pair_masks: pair ",
          m,
          " refers to box ",
          p[2 * m + k],
          " but there are ",
          num_boxes,
          " boxes");
    }
  }
  // Coordinates are compared in double for double boxes and in float otherwise (exactly, see the geometry).
  const auto compute_type = boxes.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto b = boxes.to(compute_type).contiguous();
  AT_DISPATCH_FLOATING_TYPES(compute_type, "box_pair_masks_cpu", [&] {
    draw_masks<scalar_t>(b.data_ptr<scalar_t>(), p, num_pairs, static_cast<int>(size), masks.data_ptr<float>());
  });
  return masks;
}

} // namespace

TORCH_LIBRARY_IMPL(kern_d2, CPU, m) {
  m.impl("box_pair_masks", TORCH_FN(box_pair_masks_cpu));
}

} // namespace kern_d2
