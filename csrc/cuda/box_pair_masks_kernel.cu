// CUDA kernel of kern_d2::box_pair_masks: one thread per (pair, row, column) cell, writing both channels.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "box_pair_masks.h"
#include "pair_union_geometry.h"

namespace kern_d2 {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void box_pair_masks_kernel(
    const T* __restrict__ boxes,
    const int64_t* __restrict__ pairs,
    int64_t num_cells,
    int64_t num_boxes,
    int size,
    float* __restrict__ masks) {
  const int64_t cells_per_mask = static_cast<int64_t>(size) * size;
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < num_cells;
       index += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int c = static_cast<int>(index % size);
    const int r = static_cast<int>((index / size) % size);
    const int64_t m = index / cells_per_mask;
    const int64_t s_row = pairs[2 * m], o_row = pairs[2 * m + 1];
    CUDA_KERNEL_ASSERT_MSG(
        s_row >= 0 && s_row < num_boxes && o_row >= 0 && o_row < num_boxes, "box_pair_masks: pair index out of range");
    if (!(s_row >= 0 && s_row < num_boxes && o_row >= 0 && o_row < num_boxes)) {
      continue;
    }
    const T* s = boxes + s_row * 4;
    const T* o = boxes + o_row * 4;
    const T ux1 = min_value(s[0], o[0]), uy1 = min_value(s[1], o[1]);
    const T ux2 = max_value(s[2], o[2]), uy2 = max_value(s[3], o[3]);
    const int64_t cell = static_cast<int64_t>(r) * size + c;
    masks[(2 * m) * cells_per_mask + cell] =
        (cell_centre_inside(uy1, uy2, s[1], s[3], r, size) && cell_centre_inside(ux1, ux2, s[0], s[2], c, size)) ? 1.f
                                                                                                                  : 0.f;
    masks[(2 * m + 1) * cells_per_mask + cell] =
        (cell_centre_inside(uy1, uy2, o[1], o[3], r, size) && cell_centre_inside(ux1, ux2, o[0], o[2], c, size)) ? 1.f
                                                                                                                  : 0.f;
  }
}

at::Tensor box_pair_masks_cuda(const at::Tensor& boxes, const at::Tensor& pair_idx, int64_t size) {
  detail::check_box_pair_masks_args(boxes, pair_idx, size);
  TORCH_CHECK(boxes.is_cuda(), "box_pair_masks (CUDA kernel): boxes must be a CUDA tensor, got ", boxes.device());
  const c10::cuda::CUDAGuard device_guard(boxes.device());
  const int64_t num_pairs = pair_idx.size(0);
  auto masks = at::empty({num_pairs, 2, size, size}, boxes.options().dtype(at::kFloat));
  const int64_t num_cells = num_pairs * size * size;
  if (num_cells == 0) {
    return masks;
  }
  const auto compute_type = boxes.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto b = boxes.to(compute_type).contiguous();
  const auto pairs = pair_idx.contiguous();
  const int64_t blocks = std::min<int64_t>((num_cells + kThreads - 1) / kThreads, 65535LL * 8);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(compute_type, "box_pair_masks_cuda", [&] {
    box_pair_masks_kernel<scalar_t><<<static_cast<unsigned int>(blocks), kThreads, 0, stream>>>(
        b.data_ptr<scalar_t>(),
        pairs.data_ptr<int64_t>(),
        num_cells,
        boxes.size(0),
        static_cast<int>(size),
        masks.data_ptr<float>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return masks;
}

} // namespace

TORCH_LIBRARY_IMPL(kern_d2, CUDA, m) {
  m.impl("box_pair_masks", TORCH_FN(box_pair_masks_cuda));
}

} // namespace kern_d2
