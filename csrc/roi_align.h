// RoIAlign geometry shared by the CPU and CUDA kernels (host and device): where an RoI's bins
// and sampling points fall, their bilinear weights, and the FPN level an RoI is pooled from.
//
// The numbers follow torchvision.ops.roi_align (aligned=True is detectron2's ROIAlignV2): the
// same order of operations, so float results agree to the last bits on the CPU.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <cmath>
#include <vector>

#include "macros.h"

// The float overloads of the math functions: std:: on the host, CUDA's global ones on the device.
#if defined(__CUDA_ARCH__)
#define IDIP_MATH(fn) ::fn
#else
#define IDIP_MATH(fn) std::fn
#endif

namespace idip {

// Most feature levels one multilevel_roi_align call takes (p2..p9 would be 8).
constexpr int kMaxLevels = 8;

// The feature maps an RoI may be pooled from, passed by value to the CUDA kernels.
// `P` is `const T*` (forward inputs) or `acc_t*` (backward gradients).
template <typename P>
struct LevelTable {
  P data[kMaxLevels];
  int64_t height[kMaxLevels];
  int64_t width[kMaxLevels];
  double scale[kMaxLevels];
  int num_levels;       // 1 for the single-level roi_align
  int first_level;      // FPN level k of data[0] (scale 1/2**k)
  bool assign_levels;   // false: every RoI uses data[0]
  double canonical_box_size;
  int canonical_level;
};

// Where the bins of one RoI lie in the feature map it is pooled from.
template <typename T>
struct RoiBins {
  T start_h, start_w;  // top-left corner in feature coordinates
  T bin_h, bin_w;      // bin size
  int grid_h, grid_w;  // sampling points per bin along y and x
  T count;             // max(grid_h * grid_w, 1): the divisor of the average
};

template <typename T>
IDIP_HOST_DEVICE RoiBins<T> roi_bins(T x1, T y1, T x2, T y2, T scale, int pooled_height,
                                     int pooled_width, int sampling_ratio, bool aligned) {
  const T offset = aligned ? T(0.5) : T(0);
  RoiBins<T> r;
  r.start_w = x1 * scale - offset;
  r.start_h = y1 * scale - offset;
  T roi_w = x2 * scale - offset - r.start_w;
  T roi_h = y2 * scale - offset - r.start_h;
  if (!aligned) {  // legacy behaviour: malformed RoIs are forced to be at least 1x1
    roi_w = roi_w > T(1) ? roi_w : T(1);
    roi_h = roi_h > T(1) ? roi_h : T(1);
  }
  r.bin_h = roi_h / static_cast<T>(pooled_height);
  r.bin_w = roi_w / static_cast<T>(pooled_width);
  r.grid_h = sampling_ratio > 0 ? sampling_ratio
                                : static_cast<int>(IDIP_MATH(ceil)(roi_h / static_cast<T>(pooled_height)));
  r.grid_w = sampling_ratio > 0 ? sampling_ratio
                                : static_cast<int>(IDIP_MATH(ceil)(roi_w / static_cast<T>(pooled_width)));
  const int n = r.grid_h * r.grid_w;
  r.count = static_cast<T>(n > 1 ? n : 1);
  return r;
}

// y coordinate of sampling point iy of bin row py (x likewise).
template <typename T>
IDIP_HOST_DEVICE T sample_coord(T start, T bin, int p, int i, int grid) {
  return start + static_cast<T>(p) * bin +
         static_cast<T>(i + T(0.5)) * bin / static_cast<T>(grid);
}

// Bilinear interpolation of the point (y, x) of an H x W map: the four pixel offsets and weights.
// Returns false (and zero weights) for a point more than one pixel outside the map.
template <typename T>
struct Bilinear {
  int64_t pos[4];
  T w[4];
};

template <typename T>
IDIP_HOST_DEVICE bool bilinear_weights(T y, T x, int64_t height, int64_t width, Bilinear<T>& b) {
  // Written as !(inside) so that NaN coordinates count as outside. A map without rows or
  // columns (an FPN level coarser than a small image) has nothing to sample.
  if (height <= 0 || width <= 0 ||
      !(y >= T(-1) && y <= static_cast<T>(height) && x >= T(-1) && x <= static_cast<T>(width))) {
    for (int i = 0; i < 4; ++i) {
      b.pos[i] = 0;
      b.w[i] = T(0);
    }
    return false;
  }
  if (y <= T(0)) y = T(0);
  if (x <= T(0)) x = T(0);
  int64_t y_low = static_cast<int64_t>(y), x_low = static_cast<int64_t>(x);
  int64_t y_high, x_high;
  if (y_low >= height - 1) {
    y_high = y_low = height - 1;
    y = static_cast<T>(y_low);
  } else {
    y_high = y_low + 1;
  }
  if (x_low >= width - 1) {
    x_high = x_low = width - 1;
    x = static_cast<T>(x_low);
  } else {
    x_high = x_low + 1;
  }
  const T ly = y - static_cast<T>(y_low), lx = x - static_cast<T>(x_low);
  const T hy = T(1) - ly, hx = T(1) - lx;
  b.pos[0] = y_low * width + x_low;
  b.pos[1] = y_low * width + x_high;
  b.pos[2] = y_high * width + x_low;
  b.pos[3] = y_high * width + x_high;
  b.w[0] = hy * hx;
  b.w[1] = hy * lx;
  b.w[2] = ly * hx;
  b.w[3] = ly * lx;
  return true;
}

// Index into a LevelTable of the level RoI (x1, y1, x2, y2) is pooled from:
// floor(canonical_level + log2(sqrt(area) / canonical_box_size + 1e-8)), clamped to the levels
// present. A negative or NaN area counts as 0 (the lowest level).
template <typename T, typename P>
IDIP_HOST_DEVICE int roi_level_index(T x1, T y1, T x2, T y2, const LevelTable<P>& levels) {
  if (!levels.assign_levels) return 0;
  T area = (x2 - x1) * (y2 - y1);
  area = area > T(0) ? area : T(0);
  const T level = IDIP_MATH(floor)(
      static_cast<T>(levels.canonical_level) +
      IDIP_MATH(log2)(IDIP_MATH(sqrt)(area) / static_cast<T>(levels.canonical_box_size) + T(1e-8)));
  const T first = static_cast<T>(levels.first_level);
  const T last = static_cast<T>(levels.first_level + levels.num_levels - 1);
  if (!(level > first)) return 0;
  if (level >= last) return levels.num_levels - 1;
  return static_cast<int>(level) - levels.first_level;
}

// A copy of a table with the data pointers of one dtype filled in.
template <typename P, typename Q>
LevelTable<Q> with_pointers(const LevelTable<P>& t, const std::vector<Q>& pointers) {
  LevelTable<Q> out;
  for (int i = 0; i < kMaxLevels; ++i) {
    out.data[i] = i < static_cast<int>(pointers.size()) ? pointers[i] : nullptr;
    out.height[i] = t.height[i];
    out.width[i] = t.width[i];
    out.scale[i] = t.scale[i];
  }
  out.num_levels = t.num_levels;
  out.first_level = t.first_level;
  out.assign_levels = t.assign_levels;
  out.canonical_box_size = t.canonical_box_size;
  out.canonical_level = t.canonical_level;
  return out;
}

inline LevelTable<const void*> single_level_table(int64_t height, int64_t width, double scale) {
  LevelTable<const void*> t{};
  t.num_levels = 1;
  t.first_level = 0;
  t.assign_levels = false;
  t.height[0] = height;
  t.width[0] = width;
  t.scale[0] = scale;
  return t;
}

// ---- argument checks (shared by the CPU and CUDA entry points) --------------------------------

inline void check_rois(const char* op, const at::Tensor& rois, const at::Tensor& like) {
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, op,
              ": rois must be [K, 5] rows of (batch_index, x1, y1, x2, y2), got ", rois.sizes());
  TORCH_CHECK(rois.scalar_type() == like.scalar_type(), op, ": rois (", rois.scalar_type(),
              ") must have the dtype of the features (", like.scalar_type(), ")");
  TORCH_CHECK(rois.device() == like.device(), op, ": rois are on ", rois.device(),
              " but the features on ", like.device());
}

inline void check_pooling(const char* op, int64_t pooled_height, int64_t pooled_width) {
  TORCH_CHECK(pooled_height > 0 && pooled_width > 0, op,
              ": output_size must be positive, got (", pooled_height, ", ", pooled_width, ")");
}

inline void check_roi_align_args(const at::Tensor& input, const at::Tensor& rois,
                                 int64_t pooled_height, int64_t pooled_width) {
  TORCH_CHECK(input.dim() == 4, "roi_align: input must be [N, C, H, W], got ", input.sizes());
  check_rois("roi_align", rois, input);
  check_pooling("roi_align", pooled_height, pooled_width);
}

inline void check_grad(const char* op, const at::Tensor& grad, const at::Tensor& rois, int64_t channels) {
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == rois.size(0) && grad.size(1) == channels, op,
              ": grad must be [K, C, pooled_h, pooled_w] with K = ", rois.size(0), ", C = ",
              channels, ", got ", grad.sizes());
  check_rois(op, rois, grad);
}

// Exponent k of a scale 1/2**k, or an error naming the scale.
inline int level_of_scale(const char* op, double scale, size_t i) {
  TORCH_CHECK(scale > 0, op, ": scales[", i, "] = ", scale, " must be positive");
  const double k = -std::log2(scale);
  const double rounded = std::round(k);
  TORCH_CHECK(std::abs(k - rounded) < 1e-6, op, ": scales[", i, "] = ", scale,
              " is not 1/2**k for an integer k");
  return static_cast<int>(rounded);
}

// Fills the level bookkeeping of a LevelTable from `scales` (data pointers are left to the caller)
// and checks that the levels are consecutive and increasing and that the shapes match.
template <typename P>
void fill_level_table(const char* op, at::ArrayRef<double> scales,
                      const std::vector<std::array<int64_t, 2>>& sizes, double canonical_box_size,
                      int64_t canonical_level, LevelTable<P>& table) {
  TORCH_CHECK(!scales.empty(), op, ": features must hold at least one level");
  TORCH_CHECK(scales.size() <= static_cast<size_t>(kMaxLevels), op, ": at most ", kMaxLevels,
              " levels are supported, got ", scales.size());
  TORCH_CHECK(sizes.size() == scales.size(), op, ": got ", sizes.size(), " feature maps but ",
              scales.size(), " scales");
  TORCH_CHECK(canonical_box_size > 0, op, ": canonical_box_size must be positive, got ",
              canonical_box_size);
  table.num_levels = static_cast<int>(scales.size());
  table.first_level = level_of_scale(op, scales[0], 0);
  table.assign_levels = true;
  table.canonical_box_size = canonical_box_size;
  table.canonical_level = static_cast<int>(canonical_level);
  for (size_t i = 0; i < scales.size(); ++i) {
    const int k = level_of_scale(op, scales[i], i);
    TORCH_CHECK(k == table.first_level + static_cast<int>(i), op,
                ": scales must be consecutive levels 1/2**k in increasing k (features ordered "
                "from the finest level), got scales[",
                i, "] = ", scales[i], " after scales[0] = ", scales[0]);
    table.height[i] = sizes[i][0];
    table.width[i] = sizes[i][1];
    table.scale[i] = scales[i];
  }
  for (size_t i = scales.size(); i < static_cast<size_t>(kMaxLevels); ++i) {
    table.data[i] = nullptr;
    table.height[i] = table.width[i] = 0;
    table.scale[i] = 0;
  }
}

// Checks the feature list of multilevel_roi_align: 4-d, one batch size, channel count, dtype and
// device. Returns the spatial size of each level.
inline std::vector<std::array<int64_t, 2>> check_features(const char* op,
                                                          at::TensorList features) {
  TORCH_CHECK(!features.empty(), op, ": features must hold at least one level");
  std::vector<std::array<int64_t, 2>> sizes;
  const auto& f0 = features[0];
  for (size_t i = 0; i < features.size(); ++i) {
    const auto& f = features[i];
    TORCH_CHECK(f.dim() == 4, op, ": features[", i, "] must be [N, C, H, W], got ", f.sizes());
    TORCH_CHECK(f.size(0) == f0.size(0) && f.size(1) == f0.size(1), op, ": features[", i,
                "] has shape ", f.sizes(), " but features[0] has ", f0.sizes(),
                " (batch and channels must agree)");
    TORCH_CHECK(f.scalar_type() == f0.scalar_type() && f.device() == f0.device(), op,
                ": features[", i, "] is ", f.scalar_type(), " on ", f.device(),
                " but features[0] is ", f0.scalar_type(), " on ", f0.device());
    sizes.push_back({f.size(2), f.size(3)});
  }
  return sizes;
}

// Checked arguments of multilevel_roi_align, shared by the CPU and CUDA entry points: the level
// table (pointers filled in by the device code) and contiguous copies of the features.
struct MultilevelForwardArgs {
  LevelTable<const void*> table{};
  std::vector<at::Tensor> features;
};

inline MultilevelForwardArgs prepare_multilevel_forward(
    const char* op, at::TensorList features, const at::Tensor& rois, int64_t pooled_height,
    int64_t pooled_width, at::ArrayRef<double> scales, double canonical_box_size,
    int64_t canonical_level) {
  auto sizes = check_features(op, features);
  check_rois(op, rois, features[0]);
  check_pooling(op, pooled_height, pooled_width);
  MultilevelForwardArgs args;
  fill_level_table(op, scales, sizes, canonical_box_size, canonical_level, args.table);
  for (const auto& f : features) args.features.push_back(f.contiguous());
  return args;
}

// The level table of multilevel_roi_align_backward, after checking its arguments.
inline LevelTable<const void*> prepare_multilevel_backward(
    const char* op, const at::Tensor& grad, const at::Tensor& rois, int64_t channels,
    at::IntArrayRef heights, at::IntArrayRef widths, at::ArrayRef<double> scales,
    double canonical_box_size, int64_t canonical_level) {
  check_grad(op, grad, rois, channels);
  TORCH_CHECK(heights.size() == scales.size() && widths.size() == scales.size(), op,
              ": heights, widths and scales must have one entry per level");
  std::vector<std::array<int64_t, 2>> sizes;
  for (size_t i = 0; i < heights.size(); ++i) sizes.push_back({heights[i], widths[i]});
  LevelTable<const void*> table{};
  fill_level_table(op, scales, sizes, canonical_box_size, canonical_level, table);
  return table;
}

}  // namespace idip
