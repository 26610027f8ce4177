// CUDA kernel of kern_d2::nms_topk, in three steps:
//   1. the boxes sorted by descending score (a stable torch sort), in the compute type (float, or double);
//   2. the suppression bitmask in parallel: mask[i][w] bit c = box i overlaps box 64 w + c with IoU > threshold,
//      for the later boxes j = 64 w + c > i only; one block of 64 threads per (row block, column block) at or above
//      the diagonal; the blocks below it are never read;
//   3. the greedy scan in a single block holding the "removed" bitmask in shared memory: it jumps to the next box
//      not removed (a word at a time), records it, lets the threads OR its mask row into "removed" in parallel and
//      stops at the max_keep-th kept box, so its cost scales with the boxes kept, not with N.
// The kept count is written to device memory next to the indices; reading it back to size the output is the op's
// one device -> host synchronisation.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "nms_topk.h"

namespace kern_d2 {
namespace {

constexpr int kBoxesPerWord = 64;
constexpr int kScanThreads = 256;
// The scan keeps one bit per box in (default-sized) shared memory.
constexpr int64_t kMaxScanWords = 48 * 1024 / sizeof(uint64_t);

template <typename T>
__global__ void nms_mask_kernel(const T* __restrict__ boxes, int64_t n, int64_t words, double threshold,
                                uint64_t* __restrict__ mask) {
  const int64_t row_block = blockIdx.y, col_block = blockIdx.x;
  if (col_block < row_block) {
    return; // the same for every thread of the block: no thread is left waiting at the barrier below
  }
  __shared__ T col_boxes[kBoxesPerWord * 4];
  const int64_t col_start = col_block * kBoxesPerWord;
  const int cols = static_cast<int>(min(static_cast<int64_t>(kBoxesPerWord), n - col_start));
  if (threadIdx.x < cols) {
    for (int k = 0; k < 4; ++k) {
      col_boxes[threadIdx.x * 4 + k] = boxes[(col_start + threadIdx.x) * 4 + k];
    }
  }
  __syncthreads();
  const int64_t i = row_block * kBoxesPerWord + threadIdx.x;
  if (i < n) {
    const T box[4] = {boxes[i * 4], boxes[i * 4 + 1], boxes[i * 4 + 2], boxes[i * 4 + 3]};
    const int first = col_block == row_block ? static_cast<int>(threadIdx.x) + 1 : 0;
    uint64_t bits = 0;
    for (int c = first; c < cols; ++c) {
      if (detail::iou_above(box, col_boxes + c * 4, threshold)) {
        bits |= uint64_t{1} << c;
      }
    }
    mask[i * words + col_block] = bits;
  }
}

// One block. Every thread walks the same sequence of boxes (i and kept are uniform: they only depend on shared
// memory read between the same barriers), so the barriers are reached by all threads.
__global__ void nms_scan_kernel(const uint64_t* __restrict__ mask, const int64_t* __restrict__ order, int64_t n,
                                int64_t words, int64_t capacity, int64_t* __restrict__ keep) {
  extern __shared__ uint64_t removed[];
  for (int64_t w = threadIdx.x; w < words; w += blockDim.x) {
    removed[w] = 0;
  }
  __syncthreads();
  int64_t kept = 0;
  int64_t i = 0; // the first box not yet visited
  while (i < n) {
    const int64_t w = i / kBoxesPerWord;
    const uint64_t live = ~removed[w] & (~uint64_t{0} << (i % kBoxesPerWord));
    if (live == 0) {
      i = (w + 1) * kBoxesPerWord;
      continue;
    }
    i = w * kBoxesPerWord + __ffsll(static_cast<long long>(live)) - 1;
    if (i >= n) {
      break; // a free bit past the last box of the last word
    }
    if (threadIdx.x == 0) {
      keep[kept] = order[i];
    }
    if (++kept == capacity) {
      break;
    }
    __syncthreads(); // every thread has read "removed" before it changes
    const uint64_t* row = mask + i * words;
    for (int64_t v = w + threadIdx.x; v < words; v += blockDim.x) {
      removed[v] |= row[v]; // bits of boxes after i only
    }
    __syncthreads();
    ++i;
  }
  if (threadIdx.x == 0) {
    keep[capacity] = kept;
  }
}

at::Tensor nms_topk_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold, int64_t max_keep) {
  detail::check_nms_topk_args(boxes, scores, iou_threshold, max_keep);
  TORCH_CHECK(boxes.is_cuda(), "nms_topk (CUDA kernel): boxes must be a CUDA tensor, got ", boxes.device());
  const c10::cuda::CUDAGuard device_guard(boxes.device());
  const int64_t n = boxes.size(0);
  const int64_t capacity = std::min(n, max_keep);
  if (capacity == 0) {
    return at::empty({0}, boxes.options().dtype(at::kLong));
  }
  const int64_t words = (n + kBoxesPerWord - 1) / kBoxesPerWord;
  TORCH_CHECK(
      words <= kMaxScanWords,
      "nms_topk (CUDA kernel): at most ",
      kMaxScanWords * kBoxesPerWord,
      " boxes, got N = ",
      n);
  const at::Tensor order = std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  const auto compute_type = boxes.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor sorted = boxes.index_select(0, order).to(compute_type).contiguous();
  auto mask = at::empty({n, words}, boxes.options().dtype(at::kLong));
  // The kept indices, then their count.
  auto keep = at::empty({capacity + 1}, boxes.options().dtype(at::kLong));
  auto* mask_bits = reinterpret_cast<uint64_t*>(mask.data_ptr<int64_t>());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(compute_type, "nms_topk_cuda", [&] {
    const dim3 grid(static_cast<unsigned int>(words), static_cast<unsigned int>(words));
    nms_mask_kernel<scalar_t><<<grid, kBoxesPerWord, 0, stream>>>(
        sorted.data_ptr<scalar_t>(), n, words, iou_threshold, mask_bits);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  nms_scan_kernel<<<1, kScanThreads, words * sizeof(uint64_t), stream>>>(
      mask_bits, order.data_ptr<int64_t>(), n, words, capacity, keep.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const int64_t count = keep[capacity].item<int64_t>(); // device -> host sync: the output size depends on the data
  return keep.narrow(0, 0, count);
}

} // namespace

TORCH_LIBRARY_IMPL(kern_d2, CUDA, m) {
  m.impl("nms_topk", TORCH_FN(nms_topk_cuda));
}

} // namespace kern_d2
