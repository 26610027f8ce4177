// kern_d2::pair_union_roi_align: RoIAlign over the union box of each (subject, object) pair, computed on the fly.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/SymInt.h>

namespace kern_d2 {

// features [B, C, H, W]; boxes [K, 5] rows (batch index, x1, y1, x2, y2) in image coordinates; pair_idx int64
// [M, 2] rows into boxes (both boxes in the same image). Returns [M, C, output_size, output_size], equal to
// torchvision.ops.roi_align(features, union_rois, output_size, spatial_scale, sampling_ratio, aligned).
at::Tensor pair_union_roi_align(
    const at::Tensor& features,
    const at::Tensor& boxes,
    const at::Tensor& pair_idx,
    int64_t output_size,
    double spatial_scale,
    int64_t sampling_ratio,
    bool aligned);

// Gradient w.r.t. features: grad [M, C, output_size, output_size] -> [batch_size, channels, height, width].
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
    c10::SymInt width);

namespace detail {

// Shape, dtype and device checks shared by the CPU and CUDA kernels; they read no tensor data.
void check_pair_union_roi_align_args(
    const at::Tensor& features,
    const at::Tensor& boxes,
    const at::Tensor& pair_idx,
    int64_t output_size);

void check_pair_union_roi_align_backward_args(
    const at::Tensor& grad,
    const at::Tensor& boxes,
    const at::Tensor& pair_idx,
    int64_t output_size,
    int64_t batch_size,
    int64_t channels,
    int64_t height,
    int64_t width);

// The dtype the kernels compute in (and convert boxes to): double for double features, float otherwise.
at::ScalarType accumulate_type(at::ScalarType features_type);

} // namespace detail
} // namespace kern_d2
