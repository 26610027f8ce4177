// kern_d2::box_pair_masks: the subject and object rectangles of each pair, drawn inside the pair's union box.
#pragma once

#include <ATen/core/Tensor.h>

namespace kern_d2 {

// boxes [K, 4] XYXY (any float dtype); pair_idx int64 [M, 2] rows into boxes. Returns float32 [M, 2, size, size]
// (channel 0 subject, 1 object); see cell_centre_inside in pair_union_geometry.h for which cells are 1.
at::Tensor box_pair_masks(const at::Tensor& boxes, const at::Tensor& pair_idx, int64_t size);

namespace detail {

// Shape, dtype and device checks shared by the CPU and CUDA kernels; they read no tensor data.
void check_box_pair_masks_args(const at::Tensor& boxes, const at::Tensor& pair_idx, int64_t size);

} // namespace detail
} // namespace kern_d2
