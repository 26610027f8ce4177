// CUDA kernels of kern_d2::ggnn_gates, kern_d2::ggnn_blend and their backward ops.
//
// The work is memory-bound (a few flops per element): each thread moves packs of 16 bytes (8 bf16, 4 fp32) and
// every intermediate stays in registers. Forward: a block row per node, threads along the channels. Backward: a
// block per pair, each thread owning a pack of channels and walking the pair's nodes, so the sums over nodes of
// broadcast inputs (message, and state or h when shared) are register accumulations; the per-node scale gradient,
// a sum over channels, goes through a warp reduction and a shared-memory accumulator per node.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "ggnn_gates.h"

namespace kern_d2 {
namespace {

using detail::GroupShape;

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <int N, typename T>
__device__ __forceinline__ Pack<T, N> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, N>*>(p);
}

template <int N, typename T>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, N>& v) {
  *reinterpret_cast<Pack<T, N>*>(p) = v;
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int offset = 16; offset > 0; offset /= 2) {
    v += __shfl_down_sync(0xffffffffu, v, offset);
  }
  return v;
}

// row / K, in 32 bits where it fits (a 64-bit division is a long instruction sequence).
__device__ __forceinline__ int64_t pair_of_row(int64_t row, int64_t K) {
  return row <= UINT32_MAX ? static_cast<int64_t>(static_cast<uint32_t>(row) / static_cast<uint32_t>(K)) : row / K;
}

// Launch shape of the forward kernels: threadIdx.x along the packs of a row, threadIdx.y over rows.
struct RowLaunch {
  dim3 grid, block;
};

RowLaunch row_launch(int64_t rows, int64_t packs) {
  const int tx = static_cast<int>(std::min<int64_t>(256, (packs + 31) / 32 * 32));
  const int ty = std::max(1, 256 / tx);
  return {dim3(static_cast<unsigned>((rows + ty - 1) / ty)), dim3(tx, ty)};
}

// Threads of a backward block (one block per pair): a warp multiple, so that every lane joins the reductions.
int pair_block_threads(int64_t packs) {
  return static_cast<int>(std::min<int64_t>(256, std::max<int64_t>(32, (packs + 31) / 32 * 32)));
}

template <typename scalar_t, int N>
__global__ void ggnn_gates_kernel(
    const scalar_t* __restrict__ state,
    const scalar_t* __restrict__ message,
    const scalar_t* __restrict__ scales,
    const scalar_t* __restrict__ states,
    int64_t rows,
    int64_t K,
    int64_t D,
    int64_t message_stride,
    bool state_broadcast,
    bool h_broadcast,
    scalar_t* __restrict__ z_out,
    scalar_t* __restrict__ reset_h_out,
    scalar_t* __restrict__ reset_out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  if (row >= rows) {
    return;
  }
  const int64_t r = pair_of_row(row, K);
  const scalar_t* s_row = state + (state_broadcast ? r : row) * 2 * D;
  const scalar_t* m_row = message + r * message_stride;
  const scalar_t* h_row = states + (h_broadcast ? r : row) * D;
  const acc_t s = scales ? acc_t(scales[row]) : acc_t(1);
  for (int64_t d = threadIdx.x * N; d < D; d += blockDim.x * N) {
    const auto sz = load_pack<N>(s_row + d), sr = load_pack<N>(s_row + D + d);
    const auto mz = load_pack<N>(m_row + d), mr = load_pack<N>(m_row + D + d);
    const auto hh = load_pack<N>(h_row + d);
    Pack<scalar_t, N> z, reset_h, reset;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const acc_t zz = detail::ggnn_sigmoid(acc_t(sz.v[j]) + s * acc_t(mz.v[j]));
      const acc_t rr = detail::ggnn_sigmoid(acc_t(sr.v[j]) + s * acc_t(mr.v[j]));
      z.v[j] = zz;
      reset_h.v[j] = rr * acc_t(hh.v[j]);
      reset.v[j] = rr;
    }
    store_pack<N>(z_out + row * D + d, z);
    store_pack<N>(reset_h_out + row * D + d, reset_h);
    if (reset_out) {
      store_pack<N>(reset_out + row * D + d, reset);
    }
  }
}

// One pack of the blend, h' = h + z (tanh(S_h + s M_h) - h): stores h' to out and the candidate tanh(...) to
// candidate_out (when not null); returns h' in acc_t (for a weighted sum).
template <int N, typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
__device__ __forceinline__ Pack<acc_t, N> blend_pack(
    const Pack<scalar_t, N>& sh,
    const Pack<scalar_t, N>& mh,
    acc_t s,
    const Pack<scalar_t, N>& zz,
    const Pack<scalar_t, N>& hh,
    scalar_t* out,
    scalar_t* candidate_out) {
  Pack<scalar_t, N> h_new, candidate;
  Pack<acc_t, N> value;
#pragma unroll
  for (int j = 0; j < N; ++j) {
    const acc_t c = detail::ggnn_tanh(acc_t(sh.v[j]) + s * acc_t(mh.v[j]));
    value.v[j] = detail::blend_value<acc_t>(c, zz.v[j], hh.v[j]);
    h_new.v[j] = value.v[j];
    candidate.v[j] = c;
  }
  store_pack<N>(out, h_new);
  if (candidate_out) {
    store_pack<N>(candidate_out, candidate);
  }
  return value;
}

template <typename scalar_t, int N>
__global__ void ggnn_blend_kernel(
    const scalar_t* __restrict__ state,
    const scalar_t* __restrict__ message,
    const scalar_t* __restrict__ scales,
    const scalar_t* __restrict__ zs,
    const scalar_t* __restrict__ states,
    int64_t rows,
    int64_t K,
    int64_t D,
    int64_t message_stride,
    bool h_broadcast,
    scalar_t* __restrict__ out,
    scalar_t* __restrict__ candidate_out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  if (row >= rows) {
    return;
  }
  const int64_t r = pair_of_row(row, K);
  const scalar_t* m_row = message + r * message_stride;
  const scalar_t* h_row = states + (h_broadcast ? r : row) * D;
  const acc_t s = scales ? acc_t(scales[row]) : acc_t(1);
  for (int64_t d = threadIdx.x * N; d < D; d += blockDim.x * N) {
    const int64_t i = row * D + d;
    const auto sh = load_pack<N>(state + i), mh = load_pack<N>(m_row + d);
    blend_pack<N>(sh, mh, s, load_pack<N>(zs + i), load_pack<N>(h_row + d), out + i,
                  candidate_out ? candidate_out + i : nullptr);
  }
}

// The blend with sum_k s_k h'_k: one block per pair (like the backward kernels), each thread walking the pair's
// nodes for its pack of channels and keeping the weighted sum in registers.
template <typename scalar_t, int N>
__global__ void ggnn_blend_sum_kernel(
    const scalar_t* __restrict__ state,
    const scalar_t* __restrict__ message,
    const scalar_t* __restrict__ scales,
    const scalar_t* __restrict__ zs,
    const scalar_t* __restrict__ states,
    int64_t K,
    int64_t D,
    int64_t message_stride,
    bool h_broadcast,
    scalar_t* __restrict__ out,
    scalar_t* __restrict__ candidate_out,
    scalar_t* __restrict__ sums_out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t r = blockIdx.x;
  for (int64_t d = threadIdx.x * N; d < D; d += blockDim.x * N) {
    const auto mh = load_pack<N>(message + r * message_stride + d);
    acc_t sum[N];
#pragma unroll
    for (int j = 0; j < N; ++j) {
      sum[j] = 0;
    }
    for (int64_t k = 0; k < K; ++k) {
      const int64_t row = r * K + k, i = row * D + d;
      const acc_t s = acc_t(scales[row]);
      const auto h_new = blend_pack<N>(load_pack<N>(state + i), mh, s, load_pack<N>(zs + i),
                                       load_pack<N>(states + (h_broadcast ? r : row) * D + d), out + i,
                                       candidate_out ? candidate_out + i : nullptr);
#pragma unroll
      for (int j = 0; j < N; ++j) {
        sum[j] += s * h_new.v[j];
      }
    }
    Pack<scalar_t, N> sums;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      sums.v[j] = sum[j];
    }
    store_pack<N>(sums_out + r * D + d, sums);
  }
}

template <typename scalar_t, int N>
__global__ void ggnn_gates_backward_kernel(
    const scalar_t* __restrict__ grad_z,
    const scalar_t* __restrict__ grad_reset_h,
    const scalar_t* __restrict__ zs,
    const scalar_t* __restrict__ resets,
    const scalar_t* __restrict__ message,
    const scalar_t* __restrict__ scales,
    const scalar_t* __restrict__ states,
    int64_t K,
    int64_t D,
    int64_t message_stride,
    bool state_broadcast,
    bool h_broadcast,
    scalar_t* __restrict__ g_state,
    scalar_t* __restrict__ g_message,
    scalar_t* __restrict__ g_scale,
    scalar_t* __restrict__ g_h) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ unsigned char shared_bytes[];
  acc_t* scale_sum = reinterpret_cast<acc_t*>(shared_bytes); // [K]
  const int64_t r = blockIdx.x;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
    scale_sum[k] = 0;
  }
  __syncthreads();
  const int64_t packs = D / N;
  for (int64_t first = 0; first < packs; first += blockDim.x) { // uniform trip count: all lanes reduce together
    const int64_t d = (first + threadIdx.x) * N;
    const bool active = d < D;
    acc_t sum_mz[N], sum_mr[N], sum_sz[N], sum_sr[N], sum_h[N];
#pragma unroll
    for (int j = 0; j < N; ++j) {
      sum_mz[j] = sum_mr[j] = sum_sz[j] = sum_sr[j] = sum_h[j] = 0;
    }
    Pack<scalar_t, N> mz, mr;
    if (active) {
      mz = load_pack<N>(message + r * message_stride + d);
      mr = load_pack<N>(message + r * message_stride + D + d);
    }
    for (int64_t k = 0; k < K; ++k) {
      const int64_t row = r * K + k;
      acc_t ds = 0;
      if (active) {
        const int64_t i = row * D + d;
        const acc_t s = scales ? acc_t(scales[row]) : acc_t(1);
        const auto gz = load_pack<N>(grad_z + i), grh = load_pack<N>(grad_reset_h + i);
        const auto zz = load_pack<N>(zs + i), rr = load_pack<N>(resets + i);
        const auto hh = load_pack<N>(states + (h_broadcast ? r : row) * D + d);
        Pack<scalar_t, N> gsz, gsr, gh;
#pragma unroll
        for (int j = 0; j < N; ++j) {
          const auto gg = detail::gate_grad<acc_t>(gz.v[j], grh.v[j], zz.v[j], rr.v[j], hh.v[j]);
          sum_mz[j] += s * gg.state_z;
          sum_mr[j] += s * gg.state_r;
          ds += acc_t(mz.v[j]) * gg.state_z + acc_t(mr.v[j]) * gg.state_r;
          sum_sz[j] += gg.state_z;
          sum_sr[j] += gg.state_r;
          sum_h[j] += gg.h;
          gsz.v[j] = gg.state_z;
          gsr.v[j] = gg.state_r;
          gh.v[j] = gg.h;
        }
        if (!state_broadcast) {
          store_pack<N>(g_state + row * 2 * D + d, gsz);
          store_pack<N>(g_state + row * 2 * D + D + d, gsr);
        }
        if (!h_broadcast) {
          store_pack<N>(g_h + i, gh);
        }
      }
      if (g_scale) {
        ds = warp_sum(ds);
        if ((threadIdx.x & 31) == 0) {
          atomicAdd(scale_sum + k, ds);
        }
      }
    }
    if (active) {
      Pack<scalar_t, N> out_mz, out_mr, out_sz, out_sr, out_h;
#pragma unroll
      for (int j = 0; j < N; ++j) {
        out_mz.v[j] = sum_mz[j];
        out_mr.v[j] = sum_mr[j];
        out_sz.v[j] = sum_sz[j];
        out_sr.v[j] = sum_sr[j];
        out_h.v[j] = sum_h[j];
      }
      store_pack<N>(g_message + r * 2 * D + d, out_mz);
      store_pack<N>(g_message + r * 2 * D + D + d, out_mr);
      if (state_broadcast) {
        store_pack<N>(g_state + r * 2 * D + d, out_sz);
        store_pack<N>(g_state + r * 2 * D + D + d, out_sr);
      }
      if (h_broadcast) {
        store_pack<N>(g_h + r * D + d, out_h);
      }
    }
  }
  if (g_scale) {
    __syncthreads();
    for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
      g_scale[r * K + k] = scale_sum[k];
    }
  }
}

template <typename scalar_t, int N>
__global__ void ggnn_blend_backward_kernel(
    const scalar_t* __restrict__ grad,
    const scalar_t* __restrict__ grad_sums,
    const scalar_t* __restrict__ candidates,
    const scalar_t* __restrict__ zs,
    const scalar_t* __restrict__ message,
    const scalar_t* __restrict__ scales,
    const scalar_t* __restrict__ states,
    int64_t K,
    int64_t D,
    int64_t message_stride,
    bool h_broadcast,
    scalar_t* __restrict__ g_state,
    scalar_t* __restrict__ g_message,
    scalar_t* __restrict__ g_scale,
    scalar_t* __restrict__ g_z,
    scalar_t* __restrict__ g_h) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ unsigned char shared_bytes[];
  acc_t* scale_sum = reinterpret_cast<acc_t*>(shared_bytes); // [K]
  const int64_t r = blockIdx.x;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
    scale_sum[k] = 0;
  }
  __syncthreads();
  const int64_t packs = D / N;
  for (int64_t first = 0; first < packs; first += blockDim.x) {
    const int64_t d = (first + threadIdx.x) * N;
    const bool active = d < D;
    acc_t sum_m[N], sum_h[N];
#pragma unroll
    for (int j = 0; j < N; ++j) {
      sum_m[j] = sum_h[j] = 0;
    }
    Pack<scalar_t, N> mh, g_sum;
    if (active) {
      mh = load_pack<N>(message + r * message_stride + d);
      if (grad_sums) {
        g_sum = load_pack<N>(grad_sums + r * D + d);
      }
    }
    for (int64_t k = 0; k < K; ++k) {
      const int64_t row = r * K + k;
      acc_t ds = 0;
      if (active) {
        const int64_t i = row * D + d;
        const acc_t s = scales ? acc_t(scales[row]) : acc_t(1);
        const auto gg = load_pack<N>(grad + i), cc = load_pack<N>(candidates + i), zz = load_pack<N>(zs + i);
        const auto hh = load_pack<N>(states + (h_broadcast ? r : row) * D + d);
        Pack<scalar_t, N> gs, gz, gh;
#pragma unroll
        for (int j = 0; j < N; ++j) {
          acc_t g_out = gg.v[j];
          if (grad_sums) { // h'_k also feeds sum_k s_k h'_k
            g_out += s * acc_t(g_sum.v[j]);
            ds += acc_t(g_sum.v[j]) * detail::blend_value<acc_t>(cc.v[j], zz.v[j], hh.v[j]);
          }
          const auto bg = detail::blend_grad<acc_t>(g_out, cc.v[j], zz.v[j], hh.v[j]);
          sum_m[j] += s * bg.state_h;
          ds += acc_t(mh.v[j]) * bg.state_h;
          sum_h[j] += bg.h;
          gs.v[j] = bg.state_h;
          gz.v[j] = bg.z;
          gh.v[j] = bg.h;
        }
        store_pack<N>(g_state + i, gs);
        store_pack<N>(g_z + i, gz);
        if (!h_broadcast) {
          store_pack<N>(g_h + i, gh);
        }
      }
      if (g_scale) {
        ds = warp_sum(ds);
        if ((threadIdx.x & 31) == 0) {
          atomicAdd(scale_sum + k, ds);
        }
      }
    }
    if (active) {
      Pack<scalar_t, N> out_m, out_h;
#pragma unroll
      for (int j = 0; j < N; ++j) {
        out_m.v[j] = sum_m[j];
        out_h.v[j] = sum_h[j];
      }
      store_pack<N>(g_message + r * D + d, out_m);
      if (h_broadcast) {
        store_pack<N>(g_h + r * D + d, out_h);
      }
    }
  }
  if (g_scale) {
    __syncthreads();
    for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
      g_scale[r * K + k] = scale_sum[k];
    }
  }
}

template <typename T>
T* data_or_null(const at::Tensor& t) {
  return t.numel() > 0 ? t.data_ptr<T>() : nullptr;
}

template <typename T>
const T* optional_data(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<T>() : nullptr;
}

// Pack width: 16 bytes when every row start (message rows included) is 16-byte aligned, else one element per thread.
template <typename scalar_t>
bool can_use_packs(int64_t dim, int64_t message_stride, std::initializer_list<const at::Tensor*> tensors) {
  constexpr int64_t n = 16 / sizeof(scalar_t);
  if (dim % n != 0 || message_stride % n != 0) {
    return false;
  }
  for (const at::Tensor* t : tensors) {
    if (t->defined() && t->numel() > 0 && reinterpret_cast<uintptr_t>(t->data_ptr()) % 16 != 0) {
      return false;
    }
  }
  return true;
}

// Runs body<N>() with N = the 16-byte pack width if allowed, else N = 1.
#define KERN_D2_WITH_PACK(PACKED, ...)                  \
  if (PACKED) {                                         \
    constexpr int N = 16 / sizeof(scalar_t);            \
    __VA_ARGS__();                                      \
  } else {                                              \
    constexpr int N = 1;                                \
    __VA_ARGS__();                                      \
  }

void check_cuda(const char* op, const at::Tensor& t) {
  TORCH_CHECK(t.is_cuda(), op, " (CUDA kernel): tensors must be CUDA tensors, got ", t.device());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ggnn_gates_cuda(
    const at::Tensor& state_zr,
    const at::Tensor& message_zr,
    const c10::optional<at::Tensor>& scale,
    const at::Tensor& h,
    int64_t num_nodes,
    bool save_reset) {
  const GroupShape g = detail::check_ggnn_gates_args(state_zr, message_zr, scale, h, num_nodes);
  check_cuda("ggnn_gates", h);
  const c10::cuda::CUDAGuard device_guard(h.device());
  at::Tensor z, reset_h, reset;
  std::tie(z, reset_h, reset) = detail::empty_gates_outputs(g, h, save_reset);
  const int64_t rows = g.pairs * g.nodes;
  if (rows == 0 || g.dim == 0) {
    return {z, reset_h, reset};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "ggnn_gates_cuda", [&] {
    const auto scale_t = scale.has_value() ? *scale : at::Tensor();
    const bool packed = can_use_packs<scalar_t>(g.dim, message_zr.stride(0), {&state_zr, &message_zr, &h, &z, &reset_h, &reset});
    KERN_D2_WITH_PACK(packed, [&] {
      const RowLaunch launch = row_launch(rows, g.dim / N);
      ggnn_gates_kernel<scalar_t, N><<<launch.grid, launch.block, 0, c10::cuda::getCurrentCUDAStream()>>>(
          state_zr.data_ptr<scalar_t>(),
          message_zr.data_ptr<scalar_t>(),
          optional_data<scalar_t>(scale),
          h.data_ptr<scalar_t>(),
          rows,
          g.nodes,
          g.dim,
          message_zr.stride(0),
          g.state_broadcast,
          g.h_broadcast,
          z.data_ptr<scalar_t>(),
          reset_h.data_ptr<scalar_t>(),
          data_or_null<scalar_t>(reset));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {z, reset_h, reset};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ggnn_gates_backward_cuda(
    const at::Tensor& grad_z,
    const at::Tensor& grad_reset_h,
    const at::Tensor& z,
    const at::Tensor& reset,
    const at::Tensor& message_zr,
    const c10::optional<at::Tensor>& scale,
    const at::Tensor& h,
    bool state_broadcast) {
  const GroupShape g =
      detail::check_ggnn_gates_backward_args(grad_z, grad_reset_h, z, reset, message_zr, scale, h, state_broadcast);
  check_cuda("_ggnn_gates_backward", h);
  const c10::cuda::CUDAGuard device_guard(h.device());
  at::Tensor grad_state, grad_message, grad_scale, grad_h;
  std::tie(grad_state, grad_message, grad_scale, grad_h) = detail::empty_gates_grads(g, message_zr, scale, h);
  if (g.pairs == 0 || g.dim == 0) {
    grad_message.zero_();
    grad_scale.zero_();
    return {grad_state, grad_message, grad_scale, grad_h};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "ggnn_gates_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const bool packed = can_use_packs<scalar_t>(
        g.dim, message_zr.stride(0), {&grad_z, &grad_reset_h, &z, &reset, &message_zr, &h, &grad_state, &grad_message, &grad_h});
    KERN_D2_WITH_PACK(packed, [&] {
      const int threads = pair_block_threads(g.dim / N);
      ggnn_gates_backward_kernel<scalar_t, N>
          <<<g.pairs, threads, g.nodes * sizeof(acc_t), c10::cuda::getCurrentCUDAStream()>>>(
              grad_z.data_ptr<scalar_t>(),
              grad_reset_h.data_ptr<scalar_t>(),
              z.data_ptr<scalar_t>(),
              reset.data_ptr<scalar_t>(),
              message_zr.data_ptr<scalar_t>(),
              optional_data<scalar_t>(scale),
              h.data_ptr<scalar_t>(),
              g.nodes,
              g.dim,
              message_zr.stride(0),
              g.state_broadcast,
              g.h_broadcast,
              grad_state.data_ptr<scalar_t>(),
              grad_message.data_ptr<scalar_t>(),
              data_or_null<scalar_t>(grad_scale),
              grad_h.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {grad_state, grad_message, grad_scale, grad_h};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ggnn_blend_cuda(
    const at::Tensor& state_h,
    const at::Tensor& message_h,
    const c10::optional<at::Tensor>& scale,
    const at::Tensor& z,
    const at::Tensor& h,
    bool save_candidate,
    bool weighted_sum) {
  const GroupShape g = detail::check_ggnn_blend_args(state_h, message_h, scale, z, h);
  TORCH_CHECK(!weighted_sum || scale.has_value(), "ggnn_blend: weighted_sum needs the scale");
  check_cuda("ggnn_blend", state_h);
  const c10::cuda::CUDAGuard device_guard(state_h.device());
  at::Tensor h_new, candidate, sums;
  std::tie(h_new, candidate, sums) = detail::empty_blend_outputs(state_h, save_candidate, weighted_sum);
  const int64_t rows = g.pairs * g.nodes;
  if (rows == 0 || g.dim == 0) {
    sums.zero_();
    return {h_new, candidate, sums};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "ggnn_blend_cuda", [&] {
    const bool packed = can_use_packs<scalar_t>(
        g.dim, message_h.stride(0), {&state_h, &message_h, &z, &h, &h_new, &candidate, &sums});
    const auto stream = c10::cuda::getCurrentCUDAStream();
    KERN_D2_WITH_PACK(packed, [&] {
      if (weighted_sum) {
        ggnn_blend_sum_kernel<scalar_t, N><<<g.pairs, pair_block_threads(g.dim / N), 0, stream>>>(
            state_h.data_ptr<scalar_t>(),
            message_h.data_ptr<scalar_t>(),
            scale->data_ptr<scalar_t>(),
            z.data_ptr<scalar_t>(),
            h.data_ptr<scalar_t>(),
            g.nodes,
            g.dim,
            message_h.stride(0),
            g.h_broadcast,
            h_new.data_ptr<scalar_t>(),
            data_or_null<scalar_t>(candidate),
            sums.data_ptr<scalar_t>());
      } else {
        const RowLaunch launch = row_launch(rows, g.dim / N);
        ggnn_blend_kernel<scalar_t, N><<<launch.grid, launch.block, 0, stream>>>(
            state_h.data_ptr<scalar_t>(),
            message_h.data_ptr<scalar_t>(),
            optional_data<scalar_t>(scale),
            z.data_ptr<scalar_t>(),
            h.data_ptr<scalar_t>(),
            rows,
            g.nodes,
            g.dim,
            message_h.stride(0),
            g.h_broadcast,
            h_new.data_ptr<scalar_t>(),
            data_or_null<scalar_t>(candidate));
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {h_new, candidate, sums};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> ggnn_blend_backward_cuda(
    const at::Tensor& grad,
    const c10::optional<at::Tensor>& grad_weighted_sum,
    const at::Tensor& candidate,
    const at::Tensor& z,
    const at::Tensor& message_h,
    const c10::optional<at::Tensor>& scale,
    const at::Tensor& h) {
  const GroupShape g =
      detail::check_ggnn_blend_backward_args(grad, grad_weighted_sum, candidate, z, message_h, scale, h);
  check_cuda("_ggnn_blend_backward", h);
  const c10::cuda::CUDAGuard device_guard(h.device());
  at::Tensor grad_state, grad_message, grad_scale, grad_z, grad_h;
  std::tie(grad_state, grad_message, grad_scale, grad_z, grad_h) =
      detail::empty_blend_grads(candidate, message_h, scale, z, h);
  if (g.pairs == 0 || g.dim == 0) {
    grad_message.zero_();
    grad_scale.zero_();
    grad_h.zero_();
    return {grad_state, grad_message, grad_scale, grad_z, grad_h};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "ggnn_blend_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor grad_sums = grad_weighted_sum.has_value() ? *grad_weighted_sum : at::Tensor();
    const bool packed = can_use_packs<scalar_t>(
        g.dim,
        message_h.stride(0),
        {&grad, &candidate, &z, &message_h, &h, &grad_state, &grad_message, &grad_z, &grad_h, &grad_sums});
    KERN_D2_WITH_PACK(packed, [&] {
      const int threads = pair_block_threads(g.dim / N);
      ggnn_blend_backward_kernel<scalar_t, N>
          <<<g.pairs, threads, g.nodes * sizeof(acc_t), c10::cuda::getCurrentCUDAStream()>>>(
              grad.data_ptr<scalar_t>(),
              optional_data<scalar_t>(grad_weighted_sum),
              candidate.data_ptr<scalar_t>(),
              z.data_ptr<scalar_t>(),
              message_h.data_ptr<scalar_t>(),
              optional_data<scalar_t>(scale),
              h.data_ptr<scalar_t>(),
              g.nodes,
              g.dim,
              message_h.stride(0),
              g.h_broadcast,
              grad_state.data_ptr<scalar_t>(),
              grad_message.data_ptr<scalar_t>(),
              data_or_null<scalar_t>(grad_scale),
              grad_z.data_ptr<scalar_t>(),
              grad_h.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {grad_state, grad_message, grad_scale, grad_z, grad_h};
}

} // namespace

TORCH_LIBRARY_IMPL(kern_d2, CUDA, m) {
  m.impl("ggnn_gates", TORCH_FN(ggnn_gates_cuda));
  m.impl("_ggnn_gates_backward", TORCH_FN(ggnn_gates_backward_cuda));
  m.impl("ggnn_blend", TORCH_FN(ggnn_blend_cuda));
  m.impl("_ggnn_blend_backward", TORCH_FN(ggnn_blend_backward_cuda));
}

} // namespace kern_d2
