// CPU kernels of kern_d2::pair_union_roi_align and its backward, on the separable per-axis weights of
// pair_union_geometry.h. Forward: parallel over pairs. Backward: parallel over channels (each thread owns its
// channels' gradient planes, so there are no races and the result is deterministic).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "pair_union_geometry.h"
#include "pair_union_roi_align.h"

namespace kern_d2 {
namespace {

// Dense weights of one RoI axis over the feature rows (or columns) it can touch, with each bin's non-zero range.
template <typename T>
struct AxisWeights {
  int first = 0; // first feature row of the span
  int length = 0; // rows in the span
  std::vector<T> weight; // [pooled][length]
  std::vector<int> begin, end; // per bin: its non-zero weights lie in [begin, end) of the span

  void build(const RoIAxis<T>& axis, int pooled) {
    int last;
    axis_span(axis, pooled, first, last);
    length = last - first + 1;
    weight.assign(static_cast<size_t>(pooled) * length, T(0));
    begin.assign(pooled, 0);
    end.assign(pooled, 0);
    for (int p = 0; p < pooled; ++p) {
      T* w = weight.data() + static_cast<size_t>(p) * length;
      int b = length, e = 0;
      for (int k = 0; k < length; ++k) {
        w[k] = axis_weight(axis, p, first + k);
        if (w[k] != T(0)) {
          b = std::min(b, k);
          e = k + 1;
        }
      }
      begin[p] = b < e ? b : 0;
      end[p] = e;
    }
  }

  const T* row(int p) const {
    return weight.data() + static_cast<size_t>(p) * length;
  }
};

// Pair indices in range and both boxes of a pair in the same image of the batch (the CUDA kernels assert this).
void check_pairs(const char* op, const at::Tensor& boxes, const at::Tensor& pairs, int64_t batch_size) {
  const int64_t num_boxes = boxes.size(0);
  const auto batch_index = boxes.select(1, 0).to(at::kDouble).contiguous();
  const double* image = batch_index.data_ptr<double>();
  const int64_t* p = pairs.data_ptr<int64_t>();
  for (int64_t m = 0; m < pairs.size(0); ++m) {
    const int64_t s = p[2 * m], o = p[2 * m + 1];
    TORCH_CHECK(
        s >= 0 && s < num_boxes && o >= 0 && o < num_boxes,
        op,
        ": pair ",
        m,
        " = (",
        s,
        ", ",
        o,
        ") refers to a box outside [0, ",
        num_boxes,
        ")");
    for (const int64_t box : {s, o}) {
      TORCH_CHECK(
          image[box] >= 0 && image[box] < static_cast<double>(batch_size),
          op,
          ": box ",
          box,
          " of pair ",
          m,
          " has batch index ",
          image[box],
          " but the batch has ",
          batch_size,
          " images");
    }
    const int64_t image_s = static_cast<int64_t>(image[s]);
    const int64_t image_o = static_cast<int64_t>(image[o]);
    TORCH_CHECK(
        image_s == image_o,
        op,
        ": pair ",
        m,
        " joins box ",
        s,
        " of image ",
        image_s,
        " and box ",
        o,
        " of image ",
        image_o,
        "; both boxes of a pair must be in the same image");
  }
}

template <typename scalar_t, typename acc_t>
void forward_impl(
    const scalar_t* features,
    const acc_t* boxes,
    const int64_t* pairs,
    int64_t num_pairs,
    int64_t channels,
    int height,
    int width,
    int pooled,
    acc_t spatial_scale,
    int sampling_ratio,
    bool aligned,
    scalar_t* output) {
  const int64_t bins = static_cast<int64_t>(pooled) * pooled;
  at::parallel_for(0, num_pairs, 1, [&](int64_t begin, int64_t end) {
    AxisWeights<acc_t> wy, wx;
    std::vector<acc_t> bin_rows; // [pooled][wx.length]: the patch summed over each output row bin's rows
    for (int64_t m = begin; m < end; ++m) {
      const auto roi = make_pair_roi(
          boxes + pairs[2 * m] * 5,
          boxes + pairs[2 * m + 1] * 5,
          spatial_scale,
          aligned,
          pooled,
          sampling_ratio,
          height,
          width);
      wy.build(roi.y, pooled);
      wx.build(roi.x, pooled);
      bin_rows.resize(static_cast<size_t>(pooled) * wx.length);
      for (int64_t c = 0; c < channels; ++c) {
        const scalar_t* plane = features + (roi.batch * channels + c) * height * width;
        for (int ph = 0; ph < pooled; ++ph) {
          acc_t* sums = bin_rows.data() + static_cast<size_t>(ph) * wx.length;
          std::fill(sums, sums + wx.length, acc_t(0));
          for (int t = wy.begin[ph]; t < wy.end[ph]; ++t) {
            const acc_t w = wy.row(ph)[t];
            const scalar_t* row = plane + static_cast<int64_t>(wy.first + t) * width + wx.first;
            for (int k = 0; k < wx.length; ++k) {
              sums[k] += w * static_cast<acc_t>(row[k]);
            }
          }
        }
        scalar_t* out = output + (m * channels + c) * bins;
        for (int ph = 0; ph < pooled; ++ph) {
          const acc_t* sums = bin_rows.data() + static_cast<size_t>(ph) * wx.length;
          for (int pw = 0; pw < pooled; ++pw) {
            const acc_t* w = wx.row(pw);
            acc_t value = 0;
            for (int k = wx.begin[pw]; k < wx.end[pw]; ++k) {
              value += w[k] * sums[k];
            }
            out[ph * pooled + pw] = static_cast<scalar_t>(value / roi.count);
          }
        }
      }
    }
  });
}

template <typename scalar_t, typename acc_t>
void backward_impl(
    const scalar_t* grad,
    const acc_t* boxes,
    const int64_t* pairs,
    int64_t num_pairs,
    int64_t channels,
    int height,
    int width,
    int pooled,
    acc_t spatial_scale,
    int sampling_ratio,
    bool aligned,
    acc_t* grad_features) {
  const int64_t bins = static_cast<int64_t>(pooled) * pooled;
  const int64_t grain = std::max<int64_t>(1, (channels + at::get_num_threads() - 1) / at::get_num_threads());
  at::parallel_for(0, channels, grain, [&](int64_t c_begin, int64_t c_end) {
    AxisWeights<acc_t> wy, wx;
    std::vector<acc_t> bin_cols; // [pooled][wx.length]: the gradient of each output row bin spread over columns
    for (int64_t m = 0; m < num_pairs; ++m) {
      const auto roi = make_pair_roi(
          boxes + pairs[2 * m] * 5,
          boxes + pairs[2 * m + 1] * 5,
          spatial_scale,
          aligned,
          pooled,
          sampling_ratio,
          height,
          width);
      wy.build(roi.y, pooled);
      wx.build(roi.x, pooled);
      bin_cols.resize(static_cast<size_t>(pooled) * wx.length);
      for (int64_t c = c_begin; c < c_end; ++c) {
        const scalar_t* g = grad + (m * channels + c) * bins;
        for (int ph = 0; ph < pooled; ++ph) {
          acc_t* spread = bin_cols.data() + static_cast<size_t>(ph) * wx.length;
          std::fill(spread, spread + wx.length, acc_t(0));
          for (int pw = 0; pw < pooled; ++pw) {
            const acc_t value = static_cast<acc_t>(g[ph * pooled + pw]) / roi.count;
            const acc_t* w = wx.row(pw);
            for (int k = wx.begin[pw]; k < wx.end[pw]; ++k) {
              spread[k] += w[k] * value;
            }
          }
        }
        acc_t* plane = grad_features + (roi.batch * channels + c) * height * width;
        for (int ph = 0; ph < pooled; ++ph) {
          const acc_t* spread = bin_cols.data() + static_cast<size_t>(ph) * wx.length;
          for (int t = wy.begin[ph]; t < wy.end[ph]; ++t) {
            const acc_t w = wy.row(ph)[t];
            acc_t* row = plane + static_cast<int64_t>(wy.first + t) * width + wx.first;
            for (int k = 0; k < wx.length; ++k) {
              row[k] += w * spread[k];
            }
          }
        }
      }
    }
  });
}

at::Tensor pair_union_roi_align_cpu(
    const at::Tensor& features,
    const at::Tensor& boxes,
    const at::Tensor& pair_idx,
    int64_t output_size,
    double spatial_scale,
    int64_t sampling_ratio,
    bool aligned) {
  detail::check_pair_union_roi_align_args(features, boxes, pair_idx, output_size);
  TORCH_CHECK(
      features.is_cpu(), "pair_union_roi_align (CPU kernel): features must be a CPU tensor, got ", features.device());
  const int64_t num_pairs = pair_idx.size(0);
  const int64_t channels = features.size(1);
  auto output = at::empty({num_pairs, channels, output_size, output_size}, features.options());
  if (output.numel() == 0) {
    return output;
  }
  const auto pairs = pair_idx.contiguous();
  check_pairs("pair_union_roi_align", boxes, pairs, features.size(0));
  const auto f = features.contiguous();
  const auto b = boxes.to(detail::accumulate_type(features.scalar_type())).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, features.scalar_type(), "pair_union_roi_align_forward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        forward_impl<scalar_t, acc_t>(
            f.data_ptr<scalar_t>(),
            b.data_ptr<acc_t>(),
            pairs.data_ptr<int64_t>(),
            num_pairs,
            channels,
            static_cast<int>(features.size(2)),
            static_cast<int>(features.size(3)),
            static_cast<int>(output_size),
            static_cast<acc_t>(spatial_scale),
            static_cast<int>(sampling_ratio),
            aligned,
            output.data_ptr<scalar_t>());
      });
  return output;
}

at::Tensor pair_union_roi_align_backward_cpu(
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
  detail::check_pair_union_roi_align_backward_args(
      grad, boxes, pair_idx, output_size, batch_size, channels, height, width);
  TORCH_CHECK(
      grad.is_cpu(), "_pair_union_roi_align_backward (CPU kernel): grad must be a CPU tensor, got ", grad.device());
  const auto acc_type = detail::accumulate_type(grad.scalar_type());
  // Half/bfloat16 gradients are accumulated in an fp32 buffer and cast once at the end.
  auto grad_features = at::zeros({batch_size, channels, height, width}, grad.options().dtype(acc_type));
  if (grad.numel() == 0) {
    return grad_features.to(grad.scalar_type());
  }
  const auto pairs = pair_idx.contiguous();
  check_pairs("_pair_union_roi_align_backward", boxes, pairs, batch_size);
  const auto g = grad.contiguous();
  const auto b = boxes.to(acc_type).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad.scalar_type(), "pair_union_roi_align_backward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        backward_impl<scalar_t, acc_t>(
            g.data_ptr<scalar_t>(),
            b.data_ptr<acc_t>(),
            pairs.data_ptr<int64_t>(),
            pair_idx.size(0),
            channels,
            static_cast<int>(height),
            static_cast<int>(width),
            static_cast<int>(output_size),
            static_cast<acc_t>(spatial_scale),
            static_cast<int>(sampling_ratio),
            aligned,
            grad_features.data_ptr<acc_t>());
      });
  return grad_features.to(grad.scalar_type());
}

} // namespace

TORCH_LIBRARY_IMPL(kern_d2, CPU, m) {
  m.impl("pair_union_roi_align", TORCH_FN(pair_union_roi_align_cpu));
  m.impl("_pair_union_roi_align_backward", TORCH_FN(pair_union_roi_align_backward_cpu));
}

} // namespace kern_d2
