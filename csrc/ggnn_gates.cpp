// Schemas and argument checks of kern_d2::ggnn_gates, kern_d2::ggnn_blend and their backward ops (kernels: cpu/,
// cuda/; autograd and fake kernels are registered from Python in kern_d2/layers/ggnn_gates.py).
#include "ggnn_gates.h"

#include <ATen/ATen.h>
#include <torch/library.h>

namespace kern_d2 {
namespace detail {

namespace {

void check_tensor(const char* op, const char* name, const at::Tensor& t, const at::Tensor& like, int64_t dim) {
  TORCH_CHECK(t.dim() == dim, op, ": ", name, " must have ", dim, " dimensions, got shape ", t.sizes());
  TORCH_CHECK(
      t.scalar_type() == like.scalar_type(), op, ": ", name, " must be ", like.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK(
      t.device() == like.device(), op, ": ", name, " must be on ", like.device(), ", got ", t.device());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

void check_group_rows(const char* op, const char* name, const at::Tensor& t, int64_t pairs, int64_t nodes, int64_t width) {
  TORCH_CHECK(
      t.size(0) == pairs && (t.size(1) == nodes || t.size(1) == 1) && t.size(2) == width,
      op,
      ": ",
      name,
      " must be [",
      pairs,
      ", ",
      nodes,
      " or 1, ",
      width,
      "], got shape ",
      t.sizes());
}

// A per-pair message [pairs, width]: any row stride (it may be a column slice of all message terms), unit column
// stride.
void check_message(const char* op, const char* name, const at::Tensor& t, const at::Tensor& like, int64_t pairs, int64_t width) {
  TORCH_CHECK(t.dim() == 2, op, ": ", name, " must have 2 dimensions, got shape ", t.sizes());
  TORCH_CHECK(
      t.scalar_type() == like.scalar_type(), op, ": ", name, " must be ", like.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK(t.device() == like.device(), op, ": ", name, " must be on ", like.device(), ", got ", t.device());
  TORCH_CHECK(
      t.size(0) == pairs && t.size(1) == width,
      op,
      ": ",
      name,
      " must be [",
      pairs,
      ", ",
      width,
      "], got shape ",
      t.sizes());
  TORCH_CHECK(
      (t.stride(1) == 1 || width <= 1) && (t.stride(0) >= width || pairs <= 1),
      op,
      ": ",
      name,
      " must have unit column stride and non-overlapping rows, got strides ",
      t.strides());
}

void check_scale(const char* op, const c10::optional<at::Tensor>& scale, const at::Tensor& like, int64_t pairs, int64_t nodes) {
  if (!scale.has_value()) {
    return;
  }
  check_tensor(op, "scale", *scale, like, 2);
  TORCH_CHECK(
      scale->size(0) == pairs && scale->size(1) == nodes,
      op,
      ": scale must be [",
      pairs,
      ", ",
      nodes,
      "], got shape ",
      scale->sizes());
}

} // namespace

GroupShape check_ggnn_gates_args(
    const at::Tensor& state_zr,
    const at::Tensor& message_zr,
    const c10::optional<at::Tensor>& scale,
    const at::Tensor& h,
    int64_t num_nodes) {
  constexpr const char* op = "ggnn_gates";
  TORCH_CHECK(
      at::isFloatingType(h.scalar_type()), op, ": h must be a floating-point tensor, got ", h.scalar_type());
  check_tensor(op, "h", h, h, 3);
  check_tensor(op, "state_zr", state_zr, h, 3);
  TORCH_CHECK(num_nodes >= 1, op, ": num_nodes must be >= 1, got ", num_nodes);
  const int64_t pairs = h.size(0), dim = h.size(2);
  check_group_rows(op, "h", h, pairs, num_nodes, dim);
  check_group_rows(op, "state_zr", state_zr, pairs, num_nodes, 2 * dim);
  check_message(op, "message_zr", message_zr, h, pairs, 2 * dim);
  check_scale(op, scale, h, pairs, num_nodes);
  return {pairs, num_nodes, dim, state_zr.size(1) != num_nodes, h.size(1) != num_nodes};
}

GroupShape check_ggnn_blend_args(
    const at::Tensor& state_h,
    const at::Tensor& message_h,
    const c10::optional<at::Tensor>& scale,
    const at::Tensor& z,
    const at::Tensor& h) {
  constexpr const char* op = "ggnn_blend";
  TORCH_CHECK(
      at::isFloatingType(state_h.scalar_type()),
      op,
      ": state_h must be a floating-point tensor, got ",
      state_h.scalar_type());
  check_tensor(op, "state_h", state_h, state_h, 3);
  check_tensor(op, "z", z, state_h, 3);
  check_tensor(op, "h", h, state_h, 3);
  const int64_t pairs = state_h.size(0), nodes = state_h.size(1), dim = state_h.size(2);
  check_same_shape(op, "z", z, state_h.sizes());
  check_group_rows(op, "h", h, pairs, nodes, dim);
  check_message(op, "message_h", message_h, state_h, pairs, dim);
  check_scale(op, scale, state_h, pairs, nodes);
  return {pairs, nodes, dim, false, h.size(1) != nodes};
}

GroupShape check_ggnn_gates_backward_args(
    const at::Tensor& grad_z,
    const at::Tensor& grad_reset_h,
    const at::Tensor& z,
    const at::Tensor& reset,
    const at::Tensor& message_zr,
    const c10::optional<at::Tensor>& scale,
    const at::Tensor& h,
    bool state_broadcast) {
  constexpr const char* op = "_ggnn_gates_backward";
  check_tensor(op, "z", z, h, 3);
  TORCH_CHECK(
      reset.numel() > 0 || z.numel() == 0,
      op,
      ": the reset gates were not saved (call ggnn_gates with save_reset=True when gradients are needed)");
  const int64_t pairs = z.size(0), nodes = z.size(1), dim = z.size(2);
  for (const auto& named : {std::make_pair("grad_z", &grad_z), std::make_pair("grad_reset_h", &grad_reset_h),
                            std::make_pair("reset", &reset)}) {
    check_tensor(op, named.first, *named.second, h, 3);
    check_same_shape(op, named.first, *named.second, z.sizes());
  }
  check_tensor(op, "h", h, h, 3);
  check_group_rows(op, "h", h, pairs, nodes, dim);
  check_message(op, "message_zr", message_zr, h, pairs, 2 * dim);
  check_scale(op, scale, h, pairs, nodes);
  return {pairs, nodes, dim, state_broadcast, h.size(1) != nodes};
}

GroupShape check_ggnn_blend_backward_args(
    const at::Tensor& grad,
    const c10::optional<at::Tensor>& grad_weighted_sum,
    const at::Tensor& candidate,
    const at::Tensor& z,
    const at::Tensor& message_h,
    const c10::optional<at::Tensor>& scale,
    const at::Tensor& h) {
  TORCH_CHECK(
      candidate.numel() > 0 || z.numel() == 0,
      "_ggnn_blend_backward: the candidates were not saved (call ggnn_blend with save_candidate=True when "
      "gradients are needed)");
  const GroupShape shape = check_ggnn_blend_args(candidate, message_h, scale, z, h);
  check_tensor("_ggnn_blend_backward", "grad_h_new", grad, candidate, 3);
  check_same_shape("_ggnn_blend_backward", "grad_h_new", grad, candidate.sizes());
  if (grad_weighted_sum.has_value()) {
    TORCH_CHECK(scale.has_value(), "_ggnn_blend_backward: grad_weighted_sum needs the scale");
    check_tensor("_ggnn_blend_backward", "grad_weighted_sum", *grad_weighted_sum, candidate, 2);
    check_same_shape("_ggnn_blend_backward", "grad_weighted_sum", *grad_weighted_sum, {shape.pairs, shape.dim});
  }
  return shape;
}

namespace {

at::Tensor empty_scale_like(const c10::optional<at::Tensor>& scale, const at::Tensor& like) {
  return scale.has_value() ? at::empty_like(*scale) : at::empty({0}, like.options());
}

} // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> empty_gates_outputs(const GroupShape& g, const at::Tensor& h, bool save_reset) {
  auto z = at::empty({g.pairs, g.nodes, g.dim}, h.options());
  return {z, at::empty_like(z), save_reset ? at::empty_like(z) : at::empty({0}, h.options())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> empty_gates_grads(
    const GroupShape& g, const at::Tensor& message_zr, const c10::optional<at::Tensor>& scale, const at::Tensor& h) {
  return {
      at::empty({g.pairs, g.state_broadcast ? 1 : g.nodes, 2 * g.dim}, h.options()),
      at::empty(message_zr.sizes(), h.options()),
      empty_scale_like(scale, h),
      at::empty_like(h)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> empty_blend_outputs(
    const at::Tensor& state_h, bool save_candidate, bool weighted_sum) {
  // Distinct empty tensors for the outputs not asked for: outputs of a custom op must not alias each other.
  return {
      at::empty_like(state_h),
      save_candidate ? at::empty_like(state_h) : at::empty({0}, state_h.options()),
      weighted_sum ? at::empty({state_h.size(0), state_h.size(2)}, state_h.options())
                   : at::empty({0}, state_h.options())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> empty_blend_grads(
    const at::Tensor& candidate,
    const at::Tensor& message_h,
    const c10::optional<at::Tensor>& scale,
    const at::Tensor& z,
    const at::Tensor& h) {
  return {
      at::empty_like(candidate), at::empty(message_h.sizes(), h.options()), empty_scale_like(scale, h), at::empty_like(z),
      at::empty_like(h)};
}

void check_same_shape(const char* op, const char* name, const at::Tensor& tensor, at::IntArrayRef expected) {
  TORCH_CHECK(tensor.sizes() == expected, op, ": ", name, " must have shape ", expected, ", got ", tensor.sizes());
}

} // namespace detail

TORCH_LIBRARY_FRAGMENT(kern_d2, m) {
  m.def(
      "ggnn_gates(Tensor state_zr, Tensor message_zr, Tensor? scale, Tensor h, int num_nodes, bool save_reset) "
      "-> (Tensor z, Tensor reset_h, Tensor reset)");
  m.def(
      "_ggnn_gates_backward(Tensor grad_z, Tensor grad_reset_h, Tensor z, Tensor reset, Tensor message_zr, "
      "Tensor? scale, Tensor h, bool state_broadcast) "
      "-> (Tensor grad_state_zr, Tensor grad_message_zr, Tensor grad_scale, Tensor grad_h)");
  m.def(
      "ggnn_blend(Tensor state_h, Tensor message_h, Tensor? scale, Tensor z, Tensor h, bool save_candidate, "
      "bool weighted_sum) -> (Tensor h_new, Tensor candidate, Tensor weighted_sum)");
  m.def(
      "_ggnn_blend_backward(Tensor grad_h_new, Tensor? grad_weighted_sum, Tensor candidate, Tensor z, "
      "Tensor message_h, Tensor? scale, Tensor h) -> (Tensor grad_state_h, Tensor grad_message_h, Tensor grad_scale, Tensor grad_z, Tensor grad_h)");
}

} // namespace kern_d2
