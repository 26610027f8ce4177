// CPU kernels of kern_d2::ggnn_gates, kern_d2::ggnn_blend and their backward ops. Forward: parallel over nodes.
// Backward: parallel over pairs (each thread owns its pairs' reductions over nodes: no races, deterministic).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "ggnn_gates.h"

namespace kern_d2 {
namespace {

using detail::GroupShape;

template <typename T>
const T* optional_data(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<T>() : nullptr;
}

// Rows of 2^14 elements per task: enough work to amortise the thread hand-off.
int64_t row_grain(int64_t dim) {
  return std::max<int64_t>(1, (int64_t{1} << 14) / std::max<int64_t>(dim, 1));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ggnn_gates_cpu(
    const at::Tensor& state_zr,
    const at::Tensor& message_zr,
    const c10::optional<at::Tensor>& scale,
    const at::Tensor& h,
    int64_t num_nodes,
    bool save_reset) {
  const GroupShape g = detail::check_ggnn_gates_args(state_zr, message_zr, scale, h, num_nodes);
  at::Tensor z, reset_h, reset;
  std::tie(z, reset_h, reset) = detail::empty_gates_outputs(g, h, save_reset);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "ggnn_gates_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* state = state_zr.data_ptr<scalar_t>();
    const scalar_t* message = message_zr.data_ptr<scalar_t>();
    const scalar_t* scales = optional_data<scalar_t>(scale);
    const scalar_t* states = h.data_ptr<scalar_t>();
    scalar_t* z_out = z.data_ptr<scalar_t>();
    scalar_t* reset_h_out = reset_h.data_ptr<scalar_t>();
    scalar_t* reset_out = save_reset ? reset.data_ptr<scalar_t>() : nullptr;
    const int64_t K = g.nodes, D = g.dim, message_stride = message_zr.stride(0);
    at::parallel_for(0, g.pairs * K, row_grain(D), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t r = row / K;
        const scalar_t* s_row = state + (g.state_broadcast ? r : row) * 2 * D;
        const scalar_t* m_row = message + r * message_stride;
        const scalar_t* h_row = states + (g.h_broadcast ? r : row) * D;
        const acc_t s = scales ? acc_t(scales[row]) : acc_t(1);
        for (int64_t d = 0; d < D; ++d) {
          const acc_t zz = detail::ggnn_sigmoid(acc_t(s_row[d]) + s * acc_t(m_row[d]));
          const acc_t rr = detail::ggnn_sigmoid(acc_t(s_row[D + d]) + s * acc_t(m_row[D + d]));
          z_out[row * D + d] = zz;
          reset_h_out[row * D + d] = rr * acc_t(h_row[d]);
          if (reset_out) {
            reset_out[row * D + d] = rr;
          }
        }
      }
    });
  });
  return {z, reset_h, reset};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ggnn_gates_backward_cpu(
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
  at::Tensor grad_state, grad_message, grad_scale, grad_h;
  std::tie(grad_state, grad_message, grad_scale, grad_h) = detail::empty_gates_grads(g, message_zr, scale, h);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "ggnn_gates_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gz = grad_z.data_ptr<scalar_t>();
    const scalar_t* grh = grad_reset_h.data_ptr<scalar_t>();
    const scalar_t* zs = z.data_ptr<scalar_t>();
    const scalar_t* rs = reset.data_ptr<scalar_t>();
    const scalar_t* message = message_zr.data_ptr<scalar_t>();
    const scalar_t* scales = optional_data<scalar_t>(scale);
    const scalar_t* states = h.data_ptr<scalar_t>();
    scalar_t* g_state = grad_state.data_ptr<scalar_t>();
    scalar_t* g_message = grad_message.data_ptr<scalar_t>();
    scalar_t* g_scale = scales ? grad_scale.data_ptr<scalar_t>() : nullptr;
    scalar_t* g_h = grad_h.data_ptr<scalar_t>();
    const int64_t K = g.nodes, D = g.dim, message_stride = message_zr.stride(0);
    at::parallel_for(0, g.pairs, std::max<int64_t>(1, row_grain(D) / K), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> sum_message(2 * D), sum_state(g.state_broadcast ? 2 * D : 0), sum_h(g.h_broadcast ? D : 0);
      for (int64_t r = begin; r < end; ++r) {
        std::fill(sum_message.begin(), sum_message.end(), acc_t(0));
        std::fill(sum_state.begin(), sum_state.end(), acc_t(0));
        std::fill(sum_h.begin(), sum_h.end(), acc_t(0));
        const scalar_t* m_row = message + r * message_stride;
        for (int64_t k = 0; k < K; ++k) {
          const int64_t row = r * K + k;
          const scalar_t* h_row = states + (g.h_broadcast ? r : row) * D;
          const acc_t s = scales ? acc_t(scales[row]) : acc_t(1);
          acc_t ds = 0;
          for (int64_t d = 0; d < D; ++d) {
            const int64_t i = row * D + d;
            const auto gg = detail::gate_grad<acc_t>(gz[i], grh[i], zs[i], rs[i], h_row[d]);
            sum_message[d] += s * gg.state_z;
            sum_message[D + d] += s * gg.state_r;
            ds += acc_t(m_row[d]) * gg.state_z + acc_t(m_row[D + d]) * gg.state_r;
            if (g.state_broadcast) {
              sum_state[d] += gg.state_z;
              sum_state[D + d] += gg.state_r;
            } else {
              g_state[row * 2 * D + d] = gg.state_z;
              g_state[row * 2 * D + D + d] = gg.state_r;
            }
            if (g.h_broadcast) {
              sum_h[d] += gg.h;
            } else {
              g_h[i] = gg.h;
            }
          }
          if (g_scale) {
            g_scale[row] = ds;
          }
        }
        std::copy(sum_message.begin(), sum_message.end(), g_message + r * 2 * D);
        std::copy(sum_state.begin(), sum_state.end(), g_state + (g.state_broadcast ? r * 2 * D : 0));
        std::copy(sum_h.begin(), sum_h.end(), g_h + (g.h_broadcast ? r * D : 0));
      }
    });
  });
  return {grad_state, grad_message, grad_scale, grad_h};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ggnn_blend_cpu(
    const at::Tensor& state_h,
    const at::Tensor& message_h,
    const c10::optional<at::Tensor>& scale,
    const at::Tensor& z,
    const at::Tensor& h,
    bool save_candidate,
    bool weighted_sum) {
  const GroupShape g = detail::check_ggnn_blend_args(state_h, message_h, scale, z, h);
  TORCH_CHECK(!weighted_sum || scale.has_value(), "ggnn_blend: weighted_sum needs the scale");
  at::Tensor h_new, candidate, sums;
  std::tie(h_new, candidate, sums) = detail::empty_blend_outputs(state_h, save_candidate, weighted_sum);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "ggnn_blend_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* state = state_h.data_ptr<scalar_t>();
    const scalar_t* message = message_h.data_ptr<scalar_t>();
    const scalar_t* scales = optional_data<scalar_t>(scale);
    const scalar_t* zs = z.data_ptr<scalar_t>();
    const scalar_t* states = h.data_ptr<scalar_t>();
    scalar_t* out = h_new.data_ptr<scalar_t>();
    scalar_t* cand_out = save_candidate ? candidate.data_ptr<scalar_t>() : nullptr;
    scalar_t* sums_out = weighted_sum ? sums.data_ptr<scalar_t>() : nullptr;
    const int64_t K = g.nodes, D = g.dim, message_stride = message_h.stride(0);
    at::parallel_for(0, g.pairs, std::max<int64_t>(1, row_grain(D) / K), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> sum(sums_out ? D : 0);
      for (int64_t r = begin; r < end; ++r) {
        std::fill(sum.begin(), sum.end(), acc_t(0));
        const scalar_t* m_row = message + r * message_stride;
        for (int64_t k = 0; k < K; ++k) {
          const int64_t row = r * K + k;
          const scalar_t* h_row = states + (g.h_broadcast ? r : row) * D;
          const acc_t s = scales ? acc_t(scales[row]) : acc_t(1);
          for (int64_t d = 0; d < D; ++d) {
            const int64_t i = row * D + d;
            const acc_t c = detail::ggnn_tanh(acc_t(state[i]) + s * acc_t(m_row[d]));
            const acc_t value = detail::blend_value<acc_t>(c, zs[i], h_row[d]);
            out[i] = value;
            if (cand_out) {
              cand_out[i] = c;
            }
            if (sums_out) {
              sum[d] += s * value;
            }
          }
        }
        std::copy(sum.begin(), sum.end(), sums_out + (sums_out ? r * D : 0));
      }
    });
  });
  return {h_new, candidate, sums};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> ggnn_blend_backward_cpu(
    const at::Tensor& grad,
    const c10::optional<at::Tensor>& grad_weighted_sum,
    const at::Tensor& candidate,
    const at::Tensor& z,
    const at::Tensor& message_h,
    const c10::optional<at::Tensor>& scale,
    const at::Tensor& h) {
  const GroupShape g =
      detail::check_ggnn_blend_backward_args(grad, grad_weighted_sum, candidate, z, message_h, scale, h);
  at::Tensor grad_state, grad_message, grad_scale, grad_z, grad_h;
  std::tie(grad_state, grad_message, grad_scale, grad_z, grad_h) =
      detail::empty_blend_grads(candidate, message_h, scale, z, h);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "ggnn_blend_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gs = grad.data_ptr<scalar_t>();
    const scalar_t* g_sums = optional_data<scalar_t>(grad_weighted_sum);
    const scalar_t* cs = candidate.data_ptr<scalar_t>();
    const scalar_t* zs = z.data_ptr<scalar_t>();
    const scalar_t* message = message_h.data_ptr<scalar_t>();
    const scalar_t* scales = optional_data<scalar_t>(scale);
    const scalar_t* states = h.data_ptr<scalar_t>();
    scalar_t* g_state = grad_state.data_ptr<scalar_t>();
    scalar_t* g_message = grad_message.data_ptr<scalar_t>();
    scalar_t* g_scale = scales ? grad_scale.data_ptr<scalar_t>() : nullptr;
    scalar_t* g_z = grad_z.data_ptr<scalar_t>();
    scalar_t* g_h = grad_h.data_ptr<scalar_t>();
    const int64_t K = g.nodes, D = g.dim, message_stride = message_h.stride(0);
    at::parallel_for(0, g.pairs, std::max<int64_t>(1, row_grain(D) / K), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> sum_message(D), sum_h(g.h_broadcast ? D : 0);
      for (int64_t r = begin; r < end; ++r) {
        std::fill(sum_message.begin(), sum_message.end(), acc_t(0));
        std::fill(sum_h.begin(), sum_h.end(), acc_t(0));
        const scalar_t* m_row = message + r * message_stride;
        for (int64_t k = 0; k < K; ++k) {
          const int64_t row = r * K + k;
          const scalar_t* h_row = states + (g.h_broadcast ? r : row) * D;
          const acc_t s = scales ? acc_t(scales[row]) : acc_t(1);
          acc_t ds = 0;
          for (int64_t d = 0; d < D; ++d) {
            const int64_t i = row * D + d;
            acc_t g_out = gs[i];
            if (g_sums) { // h'_k also feeds sum_k s_k h'_k
              const acc_t g_sum = g_sums[r * D + d];
              g_out += s * g_sum;
              ds += g_sum * detail::blend_value<acc_t>(cs[i], zs[i], h_row[d]);
            }
            const auto bg = detail::blend_grad<acc_t>(g_out, cs[i], zs[i], h_row[d]);
            g_state[i] = bg.state_h;
            g_z[i] = bg.z;
            sum_message[d] += s * bg.state_h;
            ds += acc_t(m_row[d]) * bg.state_h;
            if (g.h_broadcast) {
              sum_h[d] += bg.h;
            } else {
              g_h[i] = bg.h;
            }
          }
          if (g_scale) {
            g_scale[row] = ds;
          }
        }
        std::copy(sum_message.begin(), sum_message.end(), g_message + r * D);
        std::copy(sum_h.begin(), sum_h.end(), g_h + (g.h_broadcast ? r * D : 0));
      }
    });
  });
  return {grad_state, grad_message, grad_scale, grad_z, grad_h};
}

} // namespace

TORCH_LIBRARY_IMPL(kern_d2, CPU, m) {
  m.impl("ggnn_gates", TORCH_FN(ggnn_gates_cpu));
  m.impl("_ggnn_gates_backward", TORCH_FN(ggnn_gates_backward_cpu));
  m.impl("ggnn_blend", TORCH_FN(ggnn_blend_cpu));
  m.impl("_ggnn_blend_backward", TORCH_FN(ggnn_blend_backward_cpu));
}

} // namespace kern_d2
