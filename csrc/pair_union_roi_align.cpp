// Schema, dispatch, autograd and autocast registration of kern_d2::pair_union_roi_align and its backward op
// (kernels: cpu/, cuda/).
#include "pair_union_roi_align.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace kern_d2 {

at::Tensor pair_union_roi_align(
    const at::Tensor& features,
    const at::Tensor& boxes,
    const at::Tensor& pair_idx,
    int64_t output_size,
    double spatial_scale,
    int64_t sampling_ratio,
    bool aligned) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("kern_d2::pair_union_roi_align", "")
                       .typed<decltype(pair_union_roi_align)>();
  return op.call(features, boxes, pair_idx, output_size, spatial_scale, sampling_ratio, aligned);
}

at::Tensor pair_union_roi_align_backward(
    const at::Tensor& grad,
    const at::Tensor& boxes,
    const at::Tensor& pair_idx,
    int64_t output_size,
    double spatial_scale,
    int64_t sampling_ratio,
    bool aligned,
    c10::SymInt batch_size,
    c10::SymInt channels,
    c10::SymInt height,
    c10::SymInt width) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("kern_d2::_pair_union_roi_align_backward", "")
                       .typed<decltype(pair_union_roi_align_backward)>();
  return op.call(
      grad,
      boxes,
      pair_idx,
      output_size,
      spatial_scale,
      sampling_ratio,
      aligned,
      batch_size,
      channels,
      height,
      width);
}

namespace detail {

namespace {

void check_boxes_and_pairs(const char* op, const at::Tensor& boxes, const at::Tensor& pair_idx, int64_t output_size) {
  TORCH_CHECK(
      boxes.dim() == 2 && boxes.size(1) == 5,
      op,
      ": boxes must be [K, 5] (batch index, x1, y1, x2, y2), got shape ",
      boxes.sizes());
  TORCH_CHECK(
      at::isFloatingType(boxes.scalar_type()),
      op,
      ": boxes must be a floating-point tensor, got ",
      boxes.scalar_type());
  TORCH_CHECK(
      pair_idx.dim() == 2 && pair_idx.size(1) == 2,
      op,
      ": pair_idx must be [M, 2] (subject row, object row), got shape ",
      pair_idx.sizes());
  TORCH_CHECK(pair_idx.scalar_type() == at::kLong, op, ": pair_idx must be int64, got ", pair_idx.scalar_type());
  TORCH_CHECK(
      boxes.device() == pair_idx.device(),
      op,
      ": boxes and pair_idx must be on the same device, got ",
      boxes.device(),
      " and ",
      pair_idx.device());
  TORCH_CHECK(output_size > 0, op, ": output_size must be positive, got ", output_size);
}

} // namespace

void check_pair_union_roi_align_args(
    const at::Tensor& features,
    const at::Tensor& boxes,
    const at::Tensor& pair_idx,
    int64_t output_size) {
  constexpr const char* op = "pair_union_roi_align";
  TORCH_CHECK(features.dim() == 4, op, ": features must be [B, C, H, W], got shape ", features.sizes());
  TORCH_CHECK(
      at::isFloatingType(features.scalar_type()),
      op,
      ": features must be a floating-point tensor, got ",
      features.scalar_type());
  check_boxes_and_pairs(op, boxes, pair_idx, output_size);
  TORCH_CHECK(
      features.device() == boxes.device(),
      op,
      ": features and boxes must be on the same device, got ",
      features.device(),
      " and ",
      boxes.device());
  TORCH_CHECK(
      pair_idx.size(0) == 0 || (features.size(2) > 0 && features.size(3) > 0),
      op,
      ": features have an empty spatial size ",
      features.sizes());
}

void check_pair_union_roi_align_backward_args(
    const at::Tensor& grad,
    const at::Tensor& boxes,
    const at::Tensor& pair_idx,
    int64_t output_size,
    int64_t batch_size,
    int64_t channels,
    int64_t height,
    int64_t width) {
  constexpr const char* op = "_pair_union_roi_align_backward";
  check_boxes_and_pairs(op, boxes, pair_idx, output_size);
  TORCH_CHECK(
      grad.dim() == 4 && grad.size(0) == pair_idx.size(0) && grad.size(1) == channels && grad.size(2) == output_size &&
          grad.size(3) == output_size,
      op,
      ": grad must be [M, C, output_size, output_size] = [",
      pair_idx.size(0),
      ", ",
      channels,
      ", ",
      output_size,
      ", ",
      output_size,
      "], got shape ",
      grad.sizes());
  TORCH_CHECK(
      at::isFloatingType(grad.scalar_type()), op, ": grad must be a floating-point tensor, got ", grad.scalar_type());
  TORCH_CHECK(
      grad.device() == boxes.device(),
      op,
      ": grad and boxes must be on the same device, got ",
      grad.device(),
      " and ",
      boxes.device());
  TORCH_CHECK(
      batch_size >= 0 && channels >= 0 && height >= 0 && width >= 0,
      op,
      ": negative features shape [",
      batch_size,
      ", ",
      channels,
      ", ",
      height,
      ", ",
      width,
      "]");
  TORCH_CHECK(
      pair_idx.size(0) == 0 || (height > 0 && width > 0),
      op,
      ": features have an empty spatial size ",
      height,
      "x",
      width);
}

at::ScalarType accumulate_type(at::ScalarType features_type) {
  return features_type == at::kDouble ? at::kDouble : at::kFloat;
}

} // namespace detail

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::Variable;
using torch::autograd::variable_list;

// Parameters both autograd functions save to redo the other direction.
void save_geometry(
    AutogradContext* ctx,
    const at::Tensor& boxes,
    const at::Tensor& pair_idx,
    int64_t output_size,
    double spatial_scale,
    int64_t sampling_ratio,
    bool aligned) {
  ctx->save_for_backward({boxes, pair_idx});
  ctx->saved_data["output_size"] = output_size;
  ctx->saved_data["spatial_scale"] = spatial_scale;
  ctx->saved_data["sampling_ratio"] = sampling_ratio;
  ctx->saved_data["aligned"] = aligned;
}

// The backward is linear in the output gradient, and its adjoint is the forward op: backward-of-backward is
// the forward applied to the incoming gradient, which makes double backward (gradgradcheck) work.
class PairUnionRoIAlignBackwardFunction : public torch::autograd::Function<PairUnionRoIAlignBackwardFunction> {
 public:
  static variable_list forward(
      AutogradContext* ctx,
      const Variable& grad,
      const Variable& boxes,
      const Variable& pair_idx,
      int64_t output_size,
      double spatial_scale,
      int64_t sampling_ratio,
      bool aligned,
      c10::SymInt batch_size,
      c10::SymInt channels,
      c10::SymInt height,
      c10::SymInt width) {
    save_geometry(ctx, boxes, pair_idx, output_size, spatial_scale, sampling_ratio, aligned);
    at::AutoDispatchBelowADInplaceOrView guard;
    return {pair_union_roi_align_backward(
        grad,
        boxes,
        pair_idx,
        output_size,
        spatial_scale,
        sampling_ratio,
        aligned,
        batch_size,
        channels,
        height,
        width)};
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grad_output) {
    const auto saved = ctx->get_saved_variables();
    const auto grad_grad = pair_union_roi_align(
        grad_output[0],
        saved[0],
        saved[1],
        ctx->saved_data["output_size"].toInt(),
        ctx->saved_data["spatial_scale"].toDouble(),
        ctx->saved_data["sampling_ratio"].toInt(),
        ctx->saved_data["aligned"].toBool());
    return {grad_grad, Variable(), Variable(), Variable(), Variable(), Variable(), Variable(), Variable(), Variable(),
            Variable(), Variable()};
  }
};

class PairUnionRoIAlignFunction : public torch::autograd::Function<PairUnionRoIAlignFunction> {
 public:
  static variable_list forward(
      AutogradContext* ctx,
      const Variable& features,
      const Variable& boxes,
      const Variable& pair_idx,
      int64_t output_size,
      double spatial_scale,
      int64_t sampling_ratio,
      bool aligned) {
    save_geometry(ctx, boxes, pair_idx, output_size, spatial_scale, sampling_ratio, aligned);
    ctx->saved_data["features_shape"] = features.sym_sizes();
    at::AutoDispatchBelowADInplaceOrView guard;
    return {pair_union_roi_align(features, boxes, pair_idx, output_size, spatial_scale, sampling_ratio, aligned)};
  }

  // Boxes get no gradient.
  static variable_list backward(AutogradContext* ctx, const variable_list& grad_output) {
    const auto saved = ctx->get_saved_variables();
    const auto shape = ctx->saved_data["features_shape"].toList();
    const auto grad_features = pair_union_roi_align_backward(
        grad_output[0],
        saved[0],
        saved[1],
        ctx->saved_data["output_size"].toInt(),
        ctx->saved_data["spatial_scale"].toDouble(),
        ctx->saved_data["sampling_ratio"].toInt(),
        ctx->saved_data["aligned"].toBool(),
        shape.get(0).toSymInt(),
        shape.get(1).toSymInt(),
        shape.get(2).toSymInt(),
        shape.get(3).toSymInt());
    return {grad_features, Variable(), Variable(), Variable(), Variable(), Variable(), Variable()};
  }
};

at::Tensor pair_union_roi_align_autograd(
    const at::Tensor& features,
    const at::Tensor& boxes,
    const at::Tensor& pair_idx,
    int64_t output_size,
    double spatial_scale,
    int64_t sampling_ratio,
    bool aligned) {
  return PairUnionRoIAlignFunction::apply(
      features, boxes, pair_idx, output_size, spatial_scale, sampling_ratio, aligned)[0];
}

at::Tensor pair_union_roi_align_backward_autograd(
    const at::Tensor& grad,
    const at::Tensor& boxes,
    const at::Tensor& pair_idx,
    int64_t output_size,
    double spatial_scale,
    int64_t sampling_ratio,
    bool aligned,
    c10::SymInt batch_size,
    c10::SymInt channels,
    c10::SymInt height,
    c10::SymInt width) {
  return PairUnionRoIAlignBackwardFunction::apply(
      grad,
      boxes,
      pair_idx,
      output_size,
      spatial_scale,
      sampling_ratio,
      aligned,
      batch_size,
      channels,
      height,
      width)[0];
}

// Autocast: run in the features' own dtype. The kernels accumulate in fp32 for half/bfloat16 features, so
// unlike torchvision's roi_align (which computes in the input dtype and is therefore cast to fp32 under
// autocast) there is nothing to gain from up-casting; fp32 features stay fp32 (RoIAlign is not a matmul, and
// down-casting would only lose precision). Boxes are converted to the compute dtype inside the kernels.
template <c10::DispatchKey AutocastKey>
at::Tensor pair_union_roi_align_autocast(
    const at::Tensor& features,
    const at::Tensor& boxes,
    const at::Tensor& pair_idx,
    int64_t output_size,
    double spatial_scale,
    int64_t sampling_ratio,
    bool aligned) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(AutocastKey);
  return pair_union_roi_align(features, boxes, pair_idx, output_size, spatial_scale, sampling_ratio, aligned);
}

} // namespace

TORCH_LIBRARY_FRAGMENT(kern_d2, m) {
  m.def(
      "pair_union_roi_align(Tensor features, Tensor boxes, Tensor pair_idx, int output_size, float spatial_scale, "
      "int sampling_ratio, bool aligned) -> Tensor");
  m.def(
      "_pair_union_roi_align_backward(Tensor grad, Tensor boxes, Tensor pair_idx, int output_size, "
      "float spatial_scale, int sampling_ratio, bool aligned, SymInt batch_size, SymInt channels, SymInt height, "
      "SymInt width) -> Tensor");
}

TORCH_LIBRARY_IMPL(kern_d2, Autograd, m) {
  m.impl("pair_union_roi_align", TORCH_FN(pair_union_roi_align_autograd));
  m.impl("_pair_union_roi_align_backward", TORCH_FN(pair_union_roi_align_backward_autograd));
}

TORCH_LIBRARY_IMPL(kern_d2, AutocastCPU, m) {
  m.impl("pair_union_roi_align", TORCH_FN(pair_union_roi_align_autocast<c10::DispatchKey::AutocastCPU>));
}

TORCH_LIBRARY_IMPL(kern_d2, AutocastCUDA, m) {
  m.impl("pair_union_roi_align", TORCH_FN(pair_union_roi_align_autocast<c10::DispatchKey::AutocastCUDA>));
}

} // namespace kern_d2
