// RoIAlign on the CPU: single level (roi_align) and FPN multi-level (multilevel_roi_align),
// forward and backward. Both ops run the same kernels over a LevelTable; the single-level op is
// a table of one level.
//
// The bilinear offsets and weights of an RoI's sampling points depend on the RoI only, so they
// are computed once per RoI and reused for every channel; the kernels work on channels-last
// copies of the features so that the channel loops are contiguous and vectorise.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "roi_align.h"

namespace idip {
namespace {

template <typename T>
struct RoiSamples {
  int level = 0;
  int64_t batch = 0;
  RoiBins<T> bins;
  std::vector<Bilinear<T>> points;  // [pooled_h, pooled_w, grid_h, grid_w]
};

// Level, image, bins and the bilinear offsets/weights of every sampling point of RoI k.
template <typename T, typename P>
void compute_roi_samples(const T* roi, const LevelTable<P>& levels, int64_t batch_size,
                         int pooled_height, int pooled_width, int sampling_ratio, bool aligned,
                         RoiSamples<T>& s) {
  const T batch_index = roi[0];
  TORCH_CHECK(batch_index >= T(0) && batch_index < static_cast<T>(batch_size),
              "roi_align: an RoI has batch index ", static_cast<double>(batch_index),
              " outside [0, ", batch_size, ")");
  s.batch = static_cast<int64_t>(batch_index);
  s.level = roi_level_index(roi[1], roi[2], roi[3], roi[4], levels);
  const int64_t height = levels.height[s.level], width = levels.width[s.level];
  s.bins = roi_bins(roi[1], roi[2], roi[3], roi[4], static_cast<T>(levels.scale[s.level]),
                    pooled_height, pooled_width, sampling_ratio, aligned);
  const int gh = std::max(s.bins.grid_h, 0), gw = std::max(s.bins.grid_w, 0);
  s.points.resize(static_cast<size_t>(pooled_height) * pooled_width * gh * gw);
  size_t i = 0;
  for (int py = 0; py < pooled_height; ++py) {
    for (int px = 0; px < pooled_width; ++px) {
      for (int iy = 0; iy < gh; ++iy) {
        const T y = sample_coord(s.bins.start_h, s.bins.bin_h, py, iy, s.bins.grid_h);
        for (int ix = 0; ix < gw; ++ix) {
          const T x = sample_coord(s.bins.start_w, s.bins.bin_w, px, ix, s.bins.grid_w);
          bilinear_weights(y, x, height, width, s.points[i++]);
        }
      }
    }
  }
}

// out[k, c, :, :] of one RoI for channels [c_begin, c_end). The features are channels-last
// ([N, H, W, C]), so each bilinear tap reads a contiguous run of channels and the inner loop
// vectorises; per channel the sums are the same as torchvision's (sample by sample, four taps each).
template <typename T>
void pool_roi(const RoiSamples<T>& s, const LevelTable<const T*>& levels, int64_t channels,
              int64_t c_begin, int64_t c_end, int64_t bins, T* __restrict__ acc, T* out_roi) {
  const int64_t plane = levels.height[s.level] * levels.width[s.level];
  const int64_t cn = c_end - c_begin;
  if (plane == 0) {  // a level without pixels (its data pointer may be null): nothing to pool
    for (int64_t c = 0; c < cn; ++c) std::fill_n(out_roi + (c_begin + c) * bins, bins, T(0));
    return;
  }
  const T* base = levels.data[s.level] + s.batch * plane * channels + c_begin;
  const int64_t per_bin = static_cast<int64_t>(std::max(s.bins.grid_h, 0)) *
                          std::max(s.bins.grid_w, 0);
  const Bilinear<T>* p = s.points.data();
  for (int64_t b = 0; b < bins; ++b) {
    std::fill(acc, acc + cn, T(0));
    for (int64_t j = 0; j < per_bin; ++j, ++p) {
      const T* __restrict__ t0 = base + p->pos[0] * channels;
      const T* __restrict__ t1 = base + p->pos[1] * channels;
      const T* __restrict__ t2 = base + p->pos[2] * channels;
      const T* __restrict__ t3 = base + p->pos[3] * channels;
      const T w0 = p->w[0], w1 = p->w[1], w2 = p->w[2], w3 = p->w[3];
      for (int64_t c = 0; c < cn; ++c) {
        acc[c] += w0 * t0[c] + w1 * t1[c] + w2 * t2[c] + w3 * t3[c];
      }
    }
    for (int64_t c = 0; c < cn; ++c) out_roi[(c_begin + c) * bins + b] = acc[c] / s.bins.count;
  }
}

template <typename T>
void roi_align_forward_kernel(const LevelTable<const T*>& levels, int64_t batch_size,
                              int64_t channels, const T* rois, int64_t num_rois,
                              int pooled_height, int pooled_width, int sampling_ratio,
                              bool aligned, T* out) {
  // Work items are (RoI, channel group); with few RoIs the channels are split so that every
  // thread has work, and each item computes its RoI's samples once for its channels.
  const int64_t threads = at::get_num_threads();
  const int64_t groups =
      std::max<int64_t>(1, std::min<int64_t>(channels, (4 * threads + num_rois - 1) / num_rois));
  const int64_t group_size = (channels + groups - 1) / groups;
  const int64_t bins = static_cast<int64_t>(pooled_height) * pooled_width;
  at::parallel_for(0, num_rois * groups, 1, [&](int64_t begin, int64_t end) {
    RoiSamples<T> s;
    std::vector<T> acc(group_size);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t k = item / groups, g = item % groups;
      const int64_t c_begin = g * group_size;
      const int64_t c_end = std::min(channels, c_begin + group_size);
      if (c_begin >= c_end) continue;
      compute_roi_samples(rois + k * 5, levels, batch_size, pooled_height, pooled_width,
                          sampling_ratio, aligned, s);
      pool_roi(s, levels, channels, c_begin, c_end, bins, acc.data(), out + k * channels * bins);
    }
  });
}

// Gradients of every level, channels-last ([N, H, W, C]): channels are split across threads (no
// two threads write the same element), and each thread walks all RoIs for its channels in
// torchvision's order, so every element receives its contributions in the same order.
template <typename T>
void roi_align_backward_kernel(const LevelTable<T*>& levels, int64_t batch_size,
                               int64_t channels, const T* rois, int64_t num_rois,
                               int pooled_height, int pooled_width, int sampling_ratio,
                               bool aligned, const T* grad, int64_t grad_stride_k,
                               int64_t grad_stride_c, int64_t grad_stride_h,
                               int64_t grad_stride_w) {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t grain = std::max<int64_t>(1, (channels + threads - 1) / threads);
  at::parallel_for(0, channels, grain, [&](int64_t c_begin, int64_t c_end) {
    RoiSamples<T> s;
    const int64_t cn = c_end - c_begin;
    std::vector<T> g(cn);
    for (int64_t k = 0; k < num_rois; ++k) {
      compute_roi_samples(rois + k * 5, levels, batch_size, pooled_height, pooled_width,
                          sampling_ratio, aligned, s);
      const int64_t plane = levels.height[s.level] * levels.width[s.level];
      if (plane == 0) continue;  // a level without pixels receives no gradient
      T* base = levels.data[s.level] + s.batch * plane * channels + c_begin;
      const int64_t per_bin = static_cast<int64_t>(std::max(s.bins.grid_h, 0)) *
                              std::max(s.bins.grid_w, 0);
      const T count = s.bins.count;
      const Bilinear<T>* p = s.points.data();
      for (int py = 0; py < pooled_height; ++py) {
        for (int px = 0; px < pooled_width; ++px) {
          const T* src = grad + k * grad_stride_k + c_begin * grad_stride_c +
                         py * grad_stride_h + px * grad_stride_w;
          for (int64_t c = 0; c < cn; ++c) g[c] = src[c * grad_stride_c];
          for (int64_t j = 0; j < per_bin; ++j, ++p) {
            for (int q = 0; q < 4; ++q) {
              T* __restrict__ dst = base + p->pos[q] * channels;
              const T w = p->w[q];
              const T* __restrict__ gc = g.data();
              for (int64_t c = 0; c < cn; ++c) dst[c] += gc[c] * w / count;
            }
          }
        }
      }
    }
  });
}

// float16/bfloat16 are pooled in float32 (read once, converted on the way in and out): the
// sums stay exact to float precision and the kernels need no reduced-precision arithmetic.
at::ScalarType compute_type(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

// f ([N, C, H, W], any strides) as a contiguous [N, H, W, C] tensor of dtype `type`, in one pass.
at::Tensor channels_last_copy(const at::Tensor& f, at::ScalarType type) {
  auto nhwc = f.permute({0, 2, 3, 1});
  if (nhwc.is_contiguous() && f.scalar_type() == type) return nhwc;
  return at::empty(nhwc.sizes(), f.options().dtype(type)).copy_(nhwc);
}

at::Tensor forward_levels(const std::vector<at::Tensor>& features, const at::Tensor& rois,
                          const LevelTable<const void*>& table, int64_t pooled_height,
                          int64_t pooled_width, int64_t sampling_ratio, bool aligned) {
  const auto& f0 = features[0];
  const int64_t batch = f0.size(0), channels = f0.size(1), num_rois = rois.size(0);
  const auto compute = compute_type(f0.scalar_type());
  auto r = rois.to(compute).contiguous();
  auto out = at::empty({num_rois, channels, pooled_height, pooled_width}, f0.options().dtype(compute));
  if (num_rois == 0 || channels == 0) return out.to(f0.scalar_type());
  // [N, H, W, C] copies in the compute type (one pass each; none if already channels-last).
  std::vector<at::Tensor> nhwc;
  for (const auto& f : features) nhwc.push_back(channels_last_copy(f, compute));
  AT_DISPATCH_FLOATING_TYPES(compute, "roi_align_cpu", [&] {
    std::vector<const scalar_t*> ptrs;
    for (const auto& f : nhwc) ptrs.push_back(f.data_ptr<scalar_t>());
    roi_align_forward_kernel<scalar_t>(with_pointers(table, ptrs), batch, channels,
                                       r.data_ptr<scalar_t>(), num_rois,
                                       static_cast<int>(pooled_height),
                                       static_cast<int>(pooled_width),
                                       static_cast<int>(sampling_ratio), aligned,
                                       out.data_ptr<scalar_t>());
  });
  return out.to(f0.scalar_type());
}

std::vector<at::Tensor> backward_levels(const at::Tensor& grad, const at::Tensor& rois,
                                        const LevelTable<const void*>& table, int64_t batch,
                                        int64_t channels, int64_t sampling_ratio, bool aligned) {
  const auto compute = compute_type(grad.scalar_type());
  std::vector<at::Tensor> grads;  // channels-last while accumulating, in the compute type
  for (int i = 0; i < table.num_levels; ++i) {
    grads.push_back(at::zeros({batch, table.height[i], table.width[i], channels},
                              grad.options().dtype(compute)));
  }
  const int64_t num_rois = rois.size(0);
  if (num_rois > 0 && channels > 0) {
    auto r = rois.to(compute).contiguous();
    const at::Tensor g_in = grad.to(compute);
    AT_DISPATCH_FLOATING_TYPES(compute, "roi_align_backward_cpu", [&] {
      std::vector<scalar_t*> ptrs;
      for (auto& g : grads) ptrs.push_back(g.data_ptr<scalar_t>());
      // The incoming gradient may be any strided view (e.g. an expanded sum()'s gradient).
      roi_align_backward_kernel<scalar_t>(
          with_pointers(table, ptrs), batch, channels, r.data_ptr<scalar_t>(), num_rois,
          static_cast<int>(grad.size(2)), static_cast<int>(grad.size(3)),
          static_cast<int>(sampling_ratio), aligned, g_in.data_ptr<scalar_t>(), g_in.stride(0),
          g_in.stride(1), g_in.stride(2), g_in.stride(3));
    });
  }
  for (auto& g : grads) {
    auto nchw = g.permute({0, 3, 1, 2});
    g = at::empty(nchw.sizes(), nchw.options().dtype(grad.scalar_type())).copy_(nchw);
  }
  return grads;
}

at::Tensor roi_align_cpu(const at::Tensor& input, const at::Tensor& rois, int64_t pooled_height,
                         int64_t pooled_width, double spatial_scale, int64_t sampling_ratio,
                         bool aligned) {
  check_roi_align_args(input, rois, pooled_height, pooled_width);
  return forward_levels({input.contiguous()}, rois, single_level_table(input.size(2), input.size(3), spatial_scale),
                        pooled_height, pooled_width, sampling_ratio, aligned);
}

at::Tensor roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois,
                                  at::IntArrayRef input_shape, double spatial_scale,
                                  int64_t sampling_ratio, bool aligned) {
  TORCH_CHECK(input_shape.size() == 4, "roi_align_backward: input_shape must be (N, C, H, W)");
  check_grad("roi_align_backward", grad, rois, input_shape[1]);
  return backward_levels(grad, rois,
                         single_level_table(input_shape[2], input_shape[3], spatial_scale),
                         input_shape[0], input_shape[1], sampling_ratio,
                         aligned)[0];
}

at::Tensor multilevel_roi_align_cpu(at::TensorList features, const at::Tensor& rois,
                                    int64_t pooled_height, int64_t pooled_width,
                                    at::ArrayRef<double> scales, int64_t sampling_ratio,
                                    bool aligned, double canonical_box_size,
                                    int64_t canonical_level) {
  auto args = prepare_multilevel_forward("multilevel_roi_align", features, rois, pooled_height,
                                         pooled_width, scales, canonical_box_size, canonical_level);
  return forward_levels(args.features, rois, args.table, pooled_height, pooled_width,
                        sampling_ratio, aligned);
}

std::vector<at::Tensor> multilevel_roi_align_backward_cpu(
    const at::Tensor& grad, const at::Tensor& rois, int64_t batch_size, int64_t channels,
    at::IntArrayRef heights, at::IntArrayRef widths, at::ArrayRef<double> scales,
    int64_t sampling_ratio, bool aligned, double canonical_box_size, int64_t canonical_level) {
  auto table = prepare_multilevel_backward("multilevel_roi_align_backward", grad, rois, channels,
                                           heights, widths, scales, canonical_box_size,
                                           canonical_level);
  return backward_levels(grad, rois, table, batch_size, channels, sampling_ratio, aligned);
}

}  // namespace

TORCH_LIBRARY_IMPL(idip, CPU, m) {
  m.impl("roi_align", &roi_align_cpu);
  m.impl("roi_align_backward", &roi_align_backward_cpu);
  m.impl("multilevel_roi_align", &multilevel_roi_align_cpu);
  m.impl("multilevel_roi_align_backward", &multilevel_roi_align_backward_cpu);
}

}  // namespace idip
