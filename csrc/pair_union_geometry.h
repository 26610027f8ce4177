// Geometry shared by the CPU and CUDA kernels of the pair-union ops: the union box of a (subject, object) pair,
// the RoIAlign sampling grid over it (torchvision.ops.roi_align semantics) and the cell test of box_pair_masks.
//
// RoIAlign is separable: a sample at (y, x) is bilinear, its weight on pixel (r, c) is wy(r) * wx(c), and it is
// dropped when y or x falls outside [-1, size]. So an output bin (ph, pw) equals
//   sum_r sum_c Wy[ph][r] * Wx[pw][c] * F[r][c] / count,
// where Wy[ph][r] sums the row weights of the bin's row samples (likewise Wx). The kernels work with these
// per-axis weights instead of per-sample corners: the forward reads each pixel of the RoI's patch once per
// channel, and the backward writes each patch pixel once per channel instead of four atomics per sample.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

namespace kern_d2 {

C10_HOST_DEVICE inline float ceil_value(float v) {
  return ceilf(v);
}
C10_HOST_DEVICE inline double ceil_value(double v) {
  return ceil(v);
}
template <typename T>
C10_HOST_DEVICE inline T min_value(T a, T b) {
  return b < a ? b : a;
}
template <typename T>
C10_HOST_DEVICE inline T max_value(T a, T b) {
  return a < b ? b : a;
}

// One axis (rows or columns) of the sampling grid of a RoI, in feature-map coordinates.
template <typename T>
struct RoIAxis {
  T start; // RoI start after scaling (and the -0.5 shift of aligned=True)
  T bin; // bin size
  int grid; // samples per bin (0: the bins hold no sample)
  int size; // feature-map extent along this axis
};

// Mirrors torchvision's roi_align: scale, shift by 0.5 when aligned, force malformed RoIs to one pixel when not
// aligned, and take ceil(extent / pooled) samples per bin unless sampling_ratio > 0.
template <typename T>
C10_HOST_DEVICE inline RoIAxis<T> make_roi_axis(
    T lo,
    T hi,
    T spatial_scale,
    bool aligned,
    int pooled,
    int sampling_ratio,
    int size) {
  const T offset = aligned ? T(0.5) : T(0);
  RoIAxis<T> axis;
  axis.start = lo * spatial_scale - offset;
  const T end = hi * spatial_scale - offset;
  T extent = end - axis.start;
  if (!aligned) {
    extent = max_value(extent, T(1));
  }
  axis.bin = extent / static_cast<T>(pooled);
  if (sampling_ratio > 0) {
    axis.grid = sampling_ratio;
  } else {
    // ceil(extent / pooled); a non-positive (or NaN) count means no sample, as in torchvision's empty loops.
    const T grid = ceil_value(extent / static_cast<T>(pooled));
    axis.grid = grid > T(0) ? static_cast<int>(min_value(grid, T(1 << 24))) : 0;
  }
  axis.size = size;
  return axis;
}

// Sample `i` of bin `p`: its two interpolation taps `low`, `high` and their weights, computed with the same
// expressions as torchvision's roi_align. Returns false for a sample outside [-1, size] (it contributes nothing).
template <typename T>
C10_HOST_DEVICE inline bool axis_sample(
    const RoIAxis<T>& axis,
    int p,
    int i,
    int& low,
    int& high,
    T& w_low,
    T& w_high) {
  T v = axis.start + p * axis.bin + static_cast<T>(i + .5f) * axis.bin / static_cast<T>(axis.grid);
  if (!(v >= T(-1) && v <= static_cast<T>(axis.size))) {
    return false;
  }
  if (v <= T(0)) {
    v = T(0);
  }
  low = static_cast<int>(v);
  if (low >= axis.size - 1) {
    low = high = axis.size - 1;
    v = static_cast<T>(low);
  } else {
    high = low + 1;
  }
  w_high = v - low;
  w_low = T(1) - w_high;
  return true;
}

// Wy[p][row]: the summed interpolation weight that the samples of bin `p` put on feature row `row` (or column).
template <typename T>
C10_HOST_DEVICE inline T axis_weight(const RoIAxis<T>& axis, int p, int row) {
  if (axis.grid <= 0) {
    return T(0);
  }
  int first = 0;
  int last = axis.grid - 1;
  const T step = axis.bin / static_cast<T>(axis.grid);
  if (step > T(0)) {
    // A sample reaches `row` only from within one row of it (also after clamping at the borders), so visiting
    // the samples within two rows, plus one sample of margin each side, covers them despite rounding.
    const T base = axis.start + p * axis.bin;
    const T lo = (static_cast<T>(row - 2) - base) / step - T(1.5);
    const T hi = (static_cast<T>(row + 2) - base) / step + T(0.5);
    if (lo > T(0)) {
      first = lo < static_cast<T>(axis.grid) ? static_cast<int>(lo) : axis.grid;
    }
    if (hi < static_cast<T>(last)) {
      last = hi >= T(0) ? static_cast<int>(hi) + 1 : -1;
    }
  }
  T weight = T(0);
  for (int i = first; i <= last; ++i) {
    int low, high;
    T w_low, w_high;
    if (!axis_sample(axis, p, i, low, high, w_low, w_high)) {
      continue;
    }
    if (low == row) {
      weight += w_low;
    }
    if (high == row) {
      weight += w_high;
    }
  }
  return weight;
}

// The rows (or columns) [first, last] of the feature map that samples of this axis can touch (a superset, with
// a row of margin each side; always a non-empty range inside [0, size - 1]).
template <typename T>
C10_HOST_DEVICE inline void axis_span(const RoIAxis<T>& axis, int pooled, int& first, int& last) {
  T lo = axis.start;
  T hi = axis.start + static_cast<T>(pooled) * axis.bin;
  if (hi < lo) {
    const T t = lo;
    lo = hi;
    hi = t;
  }
  const T top = static_cast<T>(axis.size - 1);
  lo = lo > T(0) ? min_value(lo, top) : T(0); // also maps NaN to 0
  hi = hi > T(0) ? min_value(hi, top) : T(0);
  first = max_value(static_cast<int>(lo) - 1, 0);
  last = min_value(static_cast<int>(hi) + 2, axis.size - 1);
}

// The union RoI of a pair and its sampling grid. `subject` and `object` are rows (batch, x1, y1, x2, y2).
template <typename T>
struct PairRoI {
  int64_t batch;
  RoIAxis<T> y;
  RoIAxis<T> x;
  T count; // samples per bin (at least 1): the divisor of the average
};

template <typename T>
C10_HOST_DEVICE inline PairRoI<T> make_pair_roi(
    const T* subject,
    const T* object,
    T spatial_scale,
    bool aligned,
    int pooled,
    int sampling_ratio,
    int height,
    int width) {
  PairRoI<T> roi;
  roi.batch = static_cast<int64_t>(subject[0]);
  roi.x = make_roi_axis(
      min_value(subject[1], object[1]),
      max_value(subject[3], object[3]),
      spatial_scale,
      aligned,
      pooled,
      sampling_ratio,
      width);
  roi.y = make_roi_axis(
      min_value(subject[2], object[2]),
      max_value(subject[4], object[4]),
      spatial_scale,
      aligned,
      pooled,
      sampling_ratio,
      height);
  roi.count = max_value(static_cast<T>(roi.y.grid) * static_cast<T>(roi.x.grid), T(1));
  return roi;
}

// box_pair_masks: whether cell `k` of a `size`-cell axis spanning the union [u_lo, u_hi] has its centre inside
// the closed interval [b_lo, b_hi]. The centre test u_lo + (k + 1/2) * (u_hi - u_lo) / size in [b_lo, b_hi] is
// evaluated multiplied through by `size`, without a division, so a zero-width union puts the whole axis inside.
template <typename T>
C10_HOST_DEVICE inline bool cell_centre_inside(T u_lo, T u_hi, T b_lo, T b_hi, int k, int size) {
  const T centre = (static_cast<T>(k) + T(0.5)) * (u_hi - u_lo);
  const T cells = static_cast<T>(size);
  return (b_lo - u_lo) * cells <= centre && centre <= (b_hi - u_lo) * cells;
}

} // namespace kern_d2
