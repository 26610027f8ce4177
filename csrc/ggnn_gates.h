// kern_d2::ggnn_gates and kern_d2::ggnn_blend: the elementwise halves of a GGNN update (kern_d2/modeling/ggnn.py)
// for nodes grouped by pair, each group of K nodes sharing one message term scaled per node:
//
//   gates:  z = sigmoid(S_z + s M_z),  r = sigmoid(S_r + s M_r),  reset_h = r * h
//   blend:  c = tanh(S_h + s M_h),     h' = h + z (c - h)
//
// On request the blend also returns sum_k s_k h'_k per pair (the message KERN's subject and object nodes receive).
// S are the per-node state terms ([R, K or 1, .] with the bias), M the per-pair message terms [R, .] (any row
// stride: they may be column slices of one [R, 3D] tensor), s the per-node scale [R, K] (1 when absent), h the
// states [R, K or 1, D]. A "K or 1" input is broadcast over the group's nodes; its gradient is summed over them.
// The math per element is shared by the CPU and CUDA kernels.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>
#include <c10/util/Optional.h>

#include <cmath>
#include <tuple>

namespace kern_d2 {

namespace detail {

// float on the device: the fast-math exponential and division (relative errors ~1e-7, far below the bf16/fp16
// storage error and the fp32 tolerance of the tests; a full IEEE division per sigmoid made the gate kernels
// instruction-bound). Elsewhere, and for double: the exact ones. tanh(x) = 1 - 2 / (exp(2x) + 1) keeps tanh on the
// same path.
C10_HOST_DEVICE inline float ggnn_exp(float x) {
#ifdef __CUDA_ARCH__
  return __expf(x);
#else
  return ::expf(x);
#endif
}
C10_HOST_DEVICE inline double ggnn_exp(double x) {
  return ::exp(x);
}

// 1 / (1 + e) for e >= 0 (0 when e is infinite).
C10_HOST_DEVICE inline float ggnn_inverse_one_plus(float e) {
#ifdef __CUDA_ARCH__
  return __fdividef(1.0f, 1.0f + e);
#else
  return 1.0f / (1.0f + e);
#endif
}
C10_HOST_DEVICE inline double ggnn_inverse_one_plus(double e) {
  return 1.0 / (1.0 + e);
}

template <typename T>
C10_HOST_DEVICE inline T ggnn_sigmoid(T x) {
  return ggnn_inverse_one_plus(ggnn_exp(-x));
}

template <typename T>
C10_HOST_DEVICE inline T ggnn_tanh(T x) {
  return T(1) - T(2) * ggnn_inverse_one_plus(ggnn_exp(T(2) * x));
}

// Gradients of one (node, channel) element of the gates: d/dS_z, d/dS_r and d/dh (through reset_h only).
template <typename T>
struct GateGrad {
  T state_z, state_r, h;
};

template <typename T>
C10_HOST_DEVICE inline GateGrad<T> gate_grad(T grad_z, T grad_reset_h, T z, T r, T h) {
  return {grad_z * z * (T(1) - z), grad_reset_h * h * r * (T(1) - r), grad_reset_h * r};
}

// h' = h + z (c - h), the blend's value (forward, and recomputed by the backward of the weighted sum).
template <typename T>
C10_HOST_DEVICE inline T blend_value(T candidate, T z, T h) {
  return h + z * (candidate - h);
}

// Gradients of one element of the blend: d/dS_h (= d/d(pre-tanh)), d/dz and d/dh.
template <typename T>
struct BlendGrad {
  T state_h, z, h;
};

template <typename T>
C10_HOST_DEVICE inline BlendGrad<T> blend_grad(T grad, T candidate, T z, T h) {
  return {grad * z * (T(1) - candidate * candidate), grad * (candidate - h), grad * (T(1) - z)};
}

// Sizes of a call, from the checked arguments.
struct GroupShape {
  int64_t pairs; // R
  int64_t nodes; // K
  int64_t dim; // D
  bool state_broadcast; // S has one row per pair, not per node
  bool h_broadcast; // h has one row per pair, not per node
};

GroupShape check_ggnn_gates_args(
    const at::Tensor& state_zr,
    const at::Tensor& message_zr,
    const c10::optional<at::Tensor>& scale,
    const at::Tensor& h,
    int64_t num_nodes);

GroupShape check_ggnn_blend_args(
    const at::Tensor& state_h,
    const at::Tensor& message_h,
    const c10::optional<at::Tensor>& scale,
    const at::Tensor& z,
    const at::Tensor& h);

GroupShape check_ggnn_gates_backward_args(
    const at::Tensor& grad_z,
    const at::Tensor& grad_reset_h,
    const at::Tensor& z,
    const at::Tensor& reset,
    const at::Tensor& message_zr,
    const c10::optional<at::Tensor>& scale,
    const at::Tensor& h,
    bool state_broadcast);

GroupShape check_ggnn_blend_backward_args(
    const at::Tensor& grad,
    const c10::optional<at::Tensor>& grad_weighted_sum,
    const at::Tensor& candidate,
    const at::Tensor& z,
    const at::Tensor& message_h,
    const c10::optional<at::Tensor>& scale,
    const at::Tensor& h);

// Uninitialised outputs of the ops, shared by the CPU and CUDA kernels. Unsaved tensors (save_reset/save_candidate
// false) and the scale gradient without a scale are empty [0].
std::tuple<at::Tensor, at::Tensor, at::Tensor> empty_gates_outputs(const GroupShape& g, const at::Tensor& h, bool save_reset);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> empty_gates_grads(
    const GroupShape& g, const at::Tensor& message_zr, const c10::optional<at::Tensor>& scale, const at::Tensor& h);
std::tuple<at::Tensor, at::Tensor, at::Tensor> empty_blend_outputs(
    const at::Tensor& state_h, bool save_candidate, bool weighted_sum);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> empty_blend_grads(
    const at::Tensor& candidate,
    const at::Tensor& message_h,
    const c10::optional<at::Tensor>& scale,
    const at::Tensor& z,
    const at::Tensor& h);

// Checks that every gradient-side tensor has its expected shape (the forward's shapes).
void check_same_shape(const char* op, const char* name, const at::Tensor& tensor, at::IntArrayRef expected);

} // namespace detail
} // namespace kern_d2
