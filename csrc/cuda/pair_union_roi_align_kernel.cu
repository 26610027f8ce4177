// CUDA kernels of kern_d2::pair_union_roi_align and its backward, on the separable per-axis weights of
// pair_union_geometry.h.
//
// One block per (pair, chunk of channels). The block walks the patch of the feature map that the pair's union
// RoI can touch in tiles of kTileRows x 32 pixels. For each tile it computes the row and column weights of every
// output bin once, in shared memory; then each warp takes one channel at a time, one lane per tile column:
//  - forward: a lane reads its column (the warp reads whole rows, coalesced) and reduces it to one value per
//    output row bin; the warp then combines those over the columns of each output bin. Partial sums stay in
//    shared memory across tiles and are written once.
//  - backward: a lane spreads the output gradient over its column and adds each pixel once with an atomic;
//    consecutive lanes hit consecutive addresses and different warps different channel planes, so atomics
//    rarely collide, and pixels no sample touches get none. torchvision's kernel instead issues four atomics
//    per sample per output, all of a warp's outputs landing on the same few pixels.
// Half/bfloat16 accumulate in fp32 (the backward into an fp32 buffer that is cast once at the end).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/Atomic.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "pair_union_geometry.h"
#include "pair_union_roi_align.h"

namespace kern_d2 {
namespace {

constexpr int kWarpSize = 32;
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * kWarpSize;
constexpr int kTileRows = 16;
constexpr int kTileCols = kWarpSize; // one column per lane
constexpr int kColStride = kTileCols + 1; // padded, so lanes reading different bins hit different banks
constexpr int kBackwardChannelsPerBlock = 64;
constexpr int kMaxForwardChannelsPerBlock = 64;
constexpr size_t kForwardSumsBytes = 16 * 1024; // shared memory for the forward's per-channel partial sums

// Per-tile weights in shared memory: row_weight[p][k] for tile row k, col_weight[p][k] for tile column k, and
// for each bin p the range [begin, end) of the tile's rows (columns) where its weights are non-zero.
template <typename T>
struct TileTables {
  T* row_weight; // [pooled][kTileRows]
  T* col_weight; // [pooled][kColStride]
  int* row_begin; // [pooled]
  int* row_end;
  int* col_begin;
  int* col_end;
};

// Shared memory of a block: the tile tables, then `scratch_per_warp` elements per warp, then `extra` elements.
template <typename T>
size_t shared_bytes(int pooled, int scratch_per_warp, int extra) {
  const size_t elements = static_cast<size_t>(pooled) * (kTileRows + kColStride) +
      static_cast<size_t>(kWarps) * scratch_per_warp + static_cast<size_t>(extra);
  return elements * sizeof(T) + 4 * static_cast<size_t>(pooled) * sizeof(int);
}

// Carves the shared memory laid out by shared_bytes; returns the start of the per-warp scratch space.
template <typename T>
__device__ T* carve_shared(unsigned char* shared, int pooled, int scratch_per_warp, int extra, TileTables<T>& tables) {
  T* cursor = reinterpret_cast<T*>(shared);
  tables.row_weight = cursor;
  cursor += pooled * kTileRows;
  tables.col_weight = cursor;
  cursor += pooled * kColStride;
  T* scratch = cursor;
  int* ints = reinterpret_cast<int*>(cursor + kWarps * scratch_per_warp + extra);
  tables.row_begin = ints;
  tables.row_end = ints + pooled;
  tables.col_begin = ints + 2 * pooled;
  tables.col_end = ints + 3 * pooled;
  return scratch;
}

// The pair's union RoI and the patch [row0, row1] x [col0, col1] its samples can touch. Returns false (after a
// device-side assert) for a pair whose indices are out of range or whose boxes lie in different images.
template <typename T>
struct PairPatch {
  PairRoI<T> roi;
  int row0, row1, col0, col1;
};

template <typename T>
__device__ bool load_pair_patch(
    const T* boxes,
    const int64_t* pairs,
    int64_t num_boxes,
    int64_t batch_size,
    int64_t m,
    int pooled,
    T spatial_scale,
    int sampling_ratio,
    bool aligned,
    int height,
    int width,
    PairPatch<T>& patch) {
  const int64_t s = pairs[2 * m], o = pairs[2 * m + 1];
  const bool rows_ok = s >= 0 && s < num_boxes && o >= 0 && o < num_boxes;
  CUDA_KERNEL_ASSERT_MSG(rows_ok, "pair_union_roi_align: a pair index is outside [0, number of boxes)");
  if (!rows_ok) {
    return false;
  }
  const T* subject = boxes + s * 5;
  const T* object = boxes + o * 5;
  patch.roi = make_pair_roi(subject, object, spatial_scale, aligned, pooled, sampling_ratio, height, width);
  const bool image_ok = subject[0] >= T(0) && subject[0] < static_cast<T>(batch_size) && object[0] >= T(0) &&
      object[0] < static_cast<T>(batch_size) && static_cast<int64_t>(object[0]) == patch.roi.batch;
  CUDA_KERNEL_ASSERT_MSG(
      image_ok, "pair_union_roi_align: both boxes of a pair must be in the same image, with a valid batch index");
  if (!image_ok) {
    return false;
  }
  axis_span(patch.roi.y, pooled, patch.row0, patch.row1);
  axis_span(patch.roi.x, pooled, patch.col0, patch.col1);
  return true;
}

// Fills the tables of the tile whose top-left pixel is (row0, col0); rows past last_row and columns past last_col
// get zero weight. Starts with a barrier, so the previous tile's tables may be read up to the call.
template <typename T>
__device__ void fill_tile_tables(
    const PairRoI<T>& roi,
    int pooled,
    int row0,
    int last_row,
    int col0,
    int last_col,
    const TileTables<T>& tables) {
  __syncthreads();
  for (int e = threadIdx.x; e < pooled * kTileRows; e += blockDim.x) {
    const int p = e / kTileRows, k = e - p * kTileRows;
    tables.row_weight[e] = row0 + k <= last_row ? axis_weight(roi.y, p, row0 + k) : T(0);
  }
  for (int e = threadIdx.x; e < pooled * kTileCols; e += blockDim.x) {
    const int p = e / kTileCols, k = e - p * kTileCols;
    tables.col_weight[p * kColStride + k] = col0 + k <= last_col ? axis_weight(roi.x, p, col0 + k) : T(0);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < 2 * pooled; e += blockDim.x) {
    const bool rows = e < pooled;
    const int p = rows ? e : e - pooled;
    const T* w = rows ? tables.row_weight + p * kTileRows : tables.col_weight + p * kColStride;
    const int n = rows ? kTileRows : kTileCols;
    int begin = n, end = 0;
    for (int k = 0; k < n; ++k) {
      if (w[k] != T(0)) {
        begin = begin < k ? begin : k;
        end = k + 1;
      }
    }
    (rows ? tables.row_begin : tables.col_begin)[p] = begin < end ? begin : 0;
    (rows ? tables.row_end : tables.col_end)[p] = end;
  }
  __syncthreads();
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads, 4) pair_union_roi_align_forward_kernel(
    const scalar_t* __restrict__ features,
    const acc_t* __restrict__ boxes,
    const int64_t* __restrict__ pairs,
    int64_t num_boxes,
    int64_t batch_size,
    int channels,
    int height,
    int width,
    int pooled,
    acc_t spatial_scale,
    int sampling_ratio,
    bool aligned,
    int channels_per_block,
    scalar_t* __restrict__ output) {
  extern __shared__ __align__(16) unsigned char shared[];
  const int64_t m = blockIdx.x;
  PairPatch<acc_t> patch;
  const bool valid = load_pair_patch(
      boxes, pairs, num_boxes, batch_size, m, pooled, spatial_scale, sampling_ratio, aligned, height, width, patch);
  if (!valid) {
    return;
  }
  const int bins = pooled * pooled;
  const int scratch_per_warp = pooled * kColStride;
  TileTables<acc_t> tables;
  acc_t* scratch = carve_shared(shared, pooled, scratch_per_warp, channels_per_block * bins, tables);
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  acc_t* bin_rows = scratch + warp * scratch_per_warp; // [pooled][kColStride]: the column reduced per row bin
  acc_t* sums = scratch + kWarps * scratch_per_warp; // [channels_per_block][bins]: partial outputs

  const int c_begin = blockIdx.y * channels_per_block;
  const int c_end = min(channels, c_begin + channels_per_block);
  // Each (channel, bin) sum is owned by one thread from here to the final write: no barrier needed for them.
  for (int c = c_begin + warp; c < c_end; c += kWarps) {
    for (int o = lane; o < bins; o += kWarpSize) {
      sums[(c - c_begin) * bins + o] = acc_t(0);
    }
  }

  for (int row0 = patch.row0; row0 <= patch.row1; row0 += kTileRows) {
    for (int col0 = patch.col0; col0 <= patch.col1; col0 += kTileCols) {
      fill_tile_tables(patch.roi, pooled, row0, patch.row1, col0, patch.col1, tables);
      const int col = col0 + lane;
      const bool col_inside = col <= patch.col1;
      const int rows = min(kTileRows, patch.row1 - row0 + 1);
      for (int c = c_begin + warp; c < c_end; c += kWarps) {
        const scalar_t* tile = features + ((patch.roi.batch * channels + c) * height + row0) * width;
        acc_t column[kTileRows];
#pragma unroll
        for (int k = 0; k < kTileRows; ++k) {
          column[k] =
              (col_inside && k < rows) ? static_cast<acc_t>(tile[static_cast<int64_t>(k) * width + col]) : acc_t(0);
        }
        for (int ph = 0; ph < pooled; ++ph) {
          acc_t value = acc_t(0);
          if (tables.row_begin[ph] < tables.row_end[ph]) { // the same for all lanes
            const acc_t* w = tables.row_weight + ph * kTileRows;
#pragma unroll
            for (int k = 0; k < kTileRows; ++k) {
              value += w[k] * column[k];
            }
          }
          bin_rows[ph * kColStride + lane] = value;
        }
        __syncwarp();
        acc_t* sum = sums + (c - c_begin) * bins;
        for (int o = lane; o < bins; o += kWarpSize) {
          const int ph = o / pooled, pw = o - ph * pooled;
          const acc_t* w = tables.col_weight + pw * kColStride;
          const acc_t* r = bin_rows + ph * kColStride;
          acc_t value = acc_t(0);
          for (int k = tables.col_begin[pw]; k < tables.col_end[pw]; ++k) {
            value += w[k] * r[k];
          }
          sum[o] += value;
        }
        __syncwarp(); // bin_rows is rewritten for the next channel
      }
    }
  }

  for (int c = c_begin + warp; c < c_end; c += kWarps) {
    scalar_t* out = output + (m * channels + c) * bins;
    const acc_t* sum = sums + (c - c_begin) * bins;
    for (int o = lane; o < bins; o += kWarpSize) {
      out[o] = static_cast<scalar_t>(sum[o] / patch.roi.count);
    }
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) pair_union_roi_align_backward_kernel(
    const scalar_t* __restrict__ grad,
    const acc_t* __restrict__ boxes,
    const int64_t* __restrict__ pairs,
    int64_t num_boxes,
    int64_t batch_size,
    int channels,
    int height,
    int width,
    int pooled,
    acc_t spatial_scale,
    int sampling_ratio,
    bool aligned,
    int channels_per_block,
    acc_t* __restrict__ grad_features) {
  extern __shared__ __align__(16) unsigned char shared[];
  const int64_t m = blockIdx.x;
  PairPatch<acc_t> patch;
  const bool valid = load_pair_patch(
      boxes, pairs, num_boxes, batch_size, m, pooled, spatial_scale, sampling_ratio, aligned, height, width, patch);
  if (!valid) {
    return;
  }
  const int bins = pooled * pooled;
  TileTables<acc_t> tables;
  acc_t* scratch = carve_shared(shared, pooled, bins, 0, tables);
  const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  acc_t* bin_grad = scratch + warp * bins; // [bins]: the channel's output gradient divided by the sample count

  const int c_begin = blockIdx.y * channels_per_block;
  const int c_end = min(channels, c_begin + channels_per_block);
  for (int row0 = patch.row0; row0 <= patch.row1; row0 += kTileRows) {
    for (int col0 = patch.col0; col0 <= patch.col1; col0 += kTileCols) {
      fill_tile_tables(patch.roi, pooled, row0, patch.row1, col0, patch.col1, tables);
      const int col = col0 + lane;
      const bool col_inside = col <= patch.col1;
      const int rows = min(kTileRows, patch.row1 - row0 + 1);
      for (int c = c_begin + warp; c < c_end; c += kWarps) {
        const scalar_t* g = grad + (m * channels + c) * bins;
        for (int o = lane; o < bins; o += kWarpSize) {
          bin_grad[o] = static_cast<acc_t>(g[o]) / patch.roi.count;
        }
        __syncwarp();
        acc_t pixel[kTileRows];
#pragma unroll
        for (int k = 0; k < kTileRows; ++k) {
          pixel[k] = acc_t(0);
        }
        for (int ph = 0; ph < pooled; ++ph) {
          if (tables.row_begin[ph] >= tables.row_end[ph]) { // the same for all lanes
            continue;
          }
          acc_t spread = acc_t(0); // gradient of row bin ph reaching this lane's column
          for (int pw = 0; pw < pooled; ++pw) {
            spread += tables.col_weight[pw * kColStride + lane] * bin_grad[ph * pooled + pw];
          }
          if (spread != acc_t(0)) {
            const acc_t* w = tables.row_weight + ph * kTileRows;
#pragma unroll
            for (int k = 0; k < kTileRows; ++k) {
              pixel[k] += w[k] * spread;
            }
          }
        }
        __syncwarp(); // bin_grad is rewritten for the next channel
        if (col_inside) {
          acc_t* dst = grad_features + ((patch.roi.batch * channels + c) * height + row0) * width + col;
#pragma unroll
          for (int k = 0; k < kTileRows; ++k) {
            if (k < rows && pixel[k] != acc_t(0)) {
              gpuAtomicAddNoReturn(dst + static_cast<int64_t>(k) * width, pixel[k]);
            }
          }
        }
      }
    }
  }
}

// Allows `bytes` of dynamic shared memory for `kernel` (more than 48 KiB needs an opt-in).
template <typename Kernel>
void reserve_shared_memory(Kernel kernel, size_t bytes, const char* op) {
  if (bytes <= 48 * 1024) {
    return;
  }
  int device = 0, allowed = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&allowed, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  TORCH_CHECK(
      bytes <= static_cast<size_t>(allowed),
      op,
      ": output_size is too large for the CUDA kernel (it needs ",
      bytes,
      " bytes of shared memory per block, the device allows ",
      allowed,
      ")");
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

dim3 grid_of(int64_t num_pairs, int64_t channels, int channels_per_block, const char* op) {
  const int64_t chunks = (channels + channels_per_block - 1) / channels_per_block;
  TORCH_CHECK(
      num_pairs <= std::numeric_limits<int>::max() && chunks <= 65535,
      op,
      ": too many pairs or channels for one launch (",
      num_pairs,
      " pairs, ",
      channels,
      " channels)");
  return dim3(static_cast<unsigned int>(num_pairs), static_cast<unsigned int>(chunks));
}

at::Tensor pair_union_roi_align_cuda(
    const at::Tensor& features,
    const at::Tensor& boxes,
    const at::Tensor& pair_idx,
    int64_t output_size,
    double spatial_scale,
    int64_t sampling_ratio,
    bool aligned) {
  constexpr const char* op = "pair_union_roi_align";
  detail::check_pair_union_roi_align_args(features, boxes, pair_idx, output_size);
  TORCH_CHECK(features.is_cuda(), op, " (CUDA kernel): features must be a CUDA tensor, got ", features.device());
  const c10::cuda::CUDAGuard device_guard(features.device());
  const int64_t num_pairs = pair_idx.size(0);
  const int64_t channels = features.size(1);
  auto output = at::empty({num_pairs, channels, output_size, output_size}, features.options());
  if (output.numel() == 0) {
    return output;
  }
  const auto f = features.contiguous();
  const auto b = boxes.to(detail::accumulate_type(features.scalar_type())).contiguous();
  const auto pairs = pair_idx.contiguous();
  const int pooled = static_cast<int>(output_size);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, features.scalar_type(), "pair_union_roi_align_forward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const size_t bins = static_cast<size_t>(pooled) * pooled;
        const int channels_per_block = static_cast<int>(std::max<size_t>(
            1, std::min<size_t>(kMaxForwardChannelsPerBlock, kForwardSumsBytes / (bins * sizeof(acc_t)))));
        const size_t bytes =
            shared_bytes<acc_t>(pooled, pooled * kColStride, static_cast<int>(channels_per_block * bins));
        auto kernel = pair_union_roi_align_forward_kernel<scalar_t, acc_t>;
        reserve_shared_memory(kernel, bytes, op);
        kernel<<<grid_of(num_pairs, channels, channels_per_block, op), kThreads, bytes, stream>>>(
            f.data_ptr<scalar_t>(),
            b.data_ptr<acc_t>(),
            pairs.data_ptr<int64_t>(),
            boxes.size(0),
            features.size(0),
            static_cast<int>(channels),
            static_cast<int>(features.size(2)),
            static_cast<int>(features.size(3)),
            pooled,
            static_cast<acc_t>(spatial_scale),
            static_cast<int>(sampling_ratio),
            aligned,
            channels_per_block,
            output.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return output;
}

at::Tensor pair_union_roi_align_backward_cuda(
    const at::Tensor& grad,
    const at::Tensor& boxes,
    const at::Tensor& pair_idx,
    int64_t output_size,
    double spatial_scale,
    int64_t sampling_ratio,
    bool aligned,
    int64_t batch_size,
    int64_t channels,
    int64_t height,
    int64_t width) {
  constexpr const char* op = "_pair_union_roi_align_backward";
  detail::check_pair_union_roi_align_backward_args(
      grad, boxes, pair_idx, output_size, batch_size, channels, height, width);
  TORCH_CHECK(grad.is_cuda(), op, " (CUDA kernel): grad must be a CUDA tensor, got ", grad.device());
  const c10::cuda::CUDAGuard device_guard(grad.device());
  const auto acc_type = detail::accumulate_type(grad.scalar_type());
  // Half/bfloat16 gradients are accumulated in an fp32 buffer (atomics on 16-bit types are slow and lossy).
  auto grad_features = at::zeros({batch_size, channels, height, width}, grad.options().dtype(acc_type));
  if (grad.numel() == 0) {
    return grad_features.to(grad.scalar_type());
  }
  const auto g = grad.contiguous();
  const auto b = boxes.to(acc_type).contiguous();
  const auto pairs = pair_idx.contiguous();
  const int pooled = static_cast<int>(output_size);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad.scalar_type(), "pair_union_roi_align_backward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const size_t bytes = shared_bytes<acc_t>(pooled, pooled * pooled, 0);
        auto kernel = pair_union_roi_align_backward_kernel<scalar_t, acc_t>;
        reserve_shared_memory(kernel, bytes, op);
        kernel<<<grid_of(pair_idx.size(0), channels, kBackwardChannelsPerBlock, op), kThreads, bytes, stream>>>(
            g.data_ptr<scalar_t>(),
            b.data_ptr<acc_t>(),
            pairs.data_ptr<int64_t>(),
            boxes.size(0),
            batch_size,
            static_cast<int>(channels),
            static_cast<int>(height),
            static_cast<int>(width),
            pooled,
            static_cast<acc_t>(spatial_scale),
            static_cast<int>(sampling_ratio),
            aligned,
            kBackwardChannelsPerBlock,
            grad_features.data_ptr<acc_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return grad_features.to(grad.scalar_type());
}

} // namespace

TORCH_LIBRARY_IMPL(kern_d2, CUDA, m) {
  m.impl("pair_union_roi_align", TORCH_FN(pair_union_roi_align_cuda));
  m.impl("_pair_union_roi_align_backward", TORCH_FN(pair_union_roi_align_backward_cuda));
}

} // namespace kern_d2
