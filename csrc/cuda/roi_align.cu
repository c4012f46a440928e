// RoIAlign on CUDA: single level (roi_align) and FPN multi-level (multilevel_roi_align), forward
// and backward. One launch per call for any number of levels: the per-level pointers, shapes and
// scales travel by value in a LevelTable, and each thread finds its RoI's level itself, so there
// is no per-level loop and no host synchronisation.
//
// float16/bfloat16 accumulate in float32; their backward scatters into float32 buffers with
// native float atomics and converts once at the end.
//
// Batch indices: roi_align (one level) checks them on the host before launching, at the cost of
// one synchronisation, and raises the CPU kernel's error; multilevel_roi_align, which must not
// synchronise, checks them in the kernels with a device-side assert.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "compat.h"

#include <algorithm>

#include "roi_align.h"

namespace idip {
namespace {

constexpr int kThreads = 256;

int64_t num_blocks(int64_t total) {
  return std::min<int64_t>((total + kThreads - 1) / kThreads, int64_t(1) << 20);
}

// One thread per output element (k, c, py, px).
template <typename T>
__global__ void roi_align_forward_kernel(LevelTable<const T*> levels, int64_t batch_size,
                                         int64_t channels, const T* __restrict__ rois,
                                         int pooled_height, int pooled_width, int sampling_ratio,
                                         bool aligned, T* __restrict__ out, int64_t total) {
  using acc_t = at::opmath_type<T>;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int px = static_cast<int>(i % pooled_width);
    const int py = static_cast<int>((i / pooled_width) % pooled_height);
    const int64_t c = (i / pooled_width / pooled_height) % channels;
    const int64_t k = i / pooled_width / pooled_height / channels;
    const T* roi = rois + k * 5;
    const acc_t x1 = roi[1], y1 = roi[2], x2 = roi[3], y2 = roi[4];
    const int64_t b = static_cast<int64_t>(static_cast<acc_t>(roi[0]));
    IDIP_KERNEL_ASSERT(b >= 0 && b < batch_size);
    const int level = roi_level_index(x1, y1, x2, y2, levels);
    const int64_t height = levels.height[level], width = levels.width[level];
    const RoiBins<acc_t> bins =
        roi_bins(x1, y1, x2, y2, static_cast<acc_t>(levels.scale[level]), pooled_height,
                 pooled_width, sampling_ratio, aligned);
    const T* src = levels.data[level] + (b * channels + c) * height * width;
    acc_t sum = 0;
    for (int iy = 0; iy < bins.grid_h; ++iy) {
      const acc_t y = sample_coord(bins.start_h, bins.bin_h, py, iy, bins.grid_h);
      for (int ix = 0; ix < bins.grid_w; ++ix) {
        const acc_t x = sample_coord(bins.start_w, bins.bin_w, px, ix, bins.grid_w);
        Bilinear<acc_t> w;
        if (!bilinear_weights(y, x, height, width, w)) continue;
        sum += w.w[0] * static_cast<acc_t>(src[w.pos[0]]) +
               w.w[1] * static_cast<acc_t>(src[w.pos[1]]) +
               w.w[2] * static_cast<acc_t>(src[w.pos[2]]) +
               w.w[3] * static_cast<acc_t>(src[w.pos[3]]);
      }
    }
    out[i] = static_cast<T>(sum / bins.count);
  }
}

// One thread per incoming gradient element; scatters into the level's gradient with atomics.
// `G` is the gradient buffer type: T for float32/float64, float for float16/bfloat16.
template <typename T, typename G>
__global__ void roi_align_backward_kernel(LevelTable<G*> levels, int64_t batch_size,
                                          int64_t channels,
                                          const T* __restrict__ rois, int pooled_height,
                                          int pooled_width, int sampling_ratio, bool aligned,
                                          const T* __restrict__ grad, int64_t sk, int64_t sc,
                                          int64_t sh, int64_t sw, int64_t total) {
  using acc_t = at::opmath_type<T>;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int px = static_cast<int>(i % pooled_width);
    const int py = static_cast<int>((i / pooled_width) % pooled_height);
    const int64_t c = (i / pooled_width / pooled_height) % channels;
    const int64_t k = i / pooled_width / pooled_height / channels;
    const T* roi = rois + k * 5;
    const acc_t x1 = roi[1], y1 = roi[2], x2 = roi[3], y2 = roi[4];
    const int64_t b = static_cast<int64_t>(static_cast<acc_t>(roi[0]));
    IDIP_KERNEL_ASSERT(b >= 0 && b < batch_size);
    const int level = roi_level_index(x1, y1, x2, y2, levels);
    const int64_t height = levels.height[level], width = levels.width[level];
    const RoiBins<acc_t> bins =
        roi_bins(x1, y1, x2, y2, static_cast<acc_t>(levels.scale[level]), pooled_height,
                 pooled_width, sampling_ratio, aligned);
    G* dst = levels.data[level] + (b * channels + c) * height * width;
    const acc_t g = static_cast<acc_t>(grad[k * sk + c * sc + py * sh + px * sw]);
    for (int iy = 0; iy < bins.grid_h; ++iy) {
      const acc_t y = sample_coord(bins.start_h, bins.bin_h, py, iy, bins.grid_h);
      for (int ix = 0; ix < bins.grid_w; ++ix) {
        const acc_t x = sample_coord(bins.start_w, bins.bin_w, px, ix, bins.grid_w);
        Bilinear<acc_t> w;
        if (!bilinear_weights(y, x, height, width, w)) continue;
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          atomicAdd(dst + w.pos[q], static_cast<G>(g * w.w[q] / bins.count));
        }
      }
    }
  }
}

at::Tensor forward_levels(const std::vector<at::Tensor>& features, const at::Tensor& rois,
                          const LevelTable<const void*>& table, int64_t pooled_height,
                          int64_t pooled_width, int64_t sampling_ratio, bool aligned) {
  const auto& f0 = features[0];
  gpu::DeviceGuard guard(f0.device());
  const int64_t batch = f0.size(0), channels = f0.size(1), num_rois = rois.size(0);
  auto r = rois.contiguous();
  auto out = at::empty({num_rois, channels, pooled_height, pooled_width}, f0.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  const auto stream = gpu::current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f0.scalar_type(), "roi_align_cuda",
                                  [&] {
    std::vector<const scalar_t*> ptrs;
    for (const auto& f : features) ptrs.push_back(f.data_ptr<scalar_t>());
    IDIP_LAUNCH_KERNEL(roi_align_forward_kernel<scalar_t>, num_blocks(total), kThreads, 0, stream,
        with_pointers(table, ptrs), batch, channels, r.data_ptr<scalar_t>(),
        static_cast<int>(pooled_height), static_cast<int>(pooled_width),
        static_cast<int>(sampling_ratio), aligned, out.data_ptr<scalar_t>(), total);
    IDIP_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::vector<at::Tensor> backward_levels(const at::Tensor& grad, const at::Tensor& rois,
                                        const LevelTable<const void*>& table, int64_t batch,
                                        int64_t channels, int64_t sampling_ratio, bool aligned) {
  gpu::DeviceGuard guard(grad.device());
  at::globalContext().alertNotDeterministic("idip::roi_align_backward (CUDA)");
  const bool reduced = grad.scalar_type() == at::kHalf || grad.scalar_type() == at::kBFloat16;
  auto buffer_options = reduced ? grad.options().dtype(at::kFloat) : grad.options();
  std::vector<at::Tensor> buffers;
  for (int i = 0; i < table.num_levels; ++i) {
    buffers.push_back(
        at::zeros({batch, channels, table.height[i], table.width[i]}, buffer_options));
  }
  const int64_t total = grad.numel();
  if (total > 0) {
    auto r = rois.contiguous();
    const auto stream = gpu::current_stream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(),
                                    "roi_align_backward_cuda", [&] {
      using buffer_t = std::conditional_t<std::is_same_v<scalar_t, at::Half> ||
                                              std::is_same_v<scalar_t, at::BFloat16>,
                                          float, scalar_t>;
      std::vector<buffer_t*> ptrs;
      for (auto& b : buffers) ptrs.push_back(b.data_ptr<buffer_t>());
      IDIP_LAUNCH_KERNEL((roi_align_backward_kernel<scalar_t, buffer_t>), num_blocks(total),
          kThreads, 0, stream,
          with_pointers(table, ptrs), batch, channels, r.data_ptr<scalar_t>(),
          static_cast<int>(grad.size(2)), static_cast<int>(grad.size(3)),
          static_cast<int>(sampling_ratio), aligned, grad.data_ptr<scalar_t>(), grad.stride(0),
          grad.stride(1), grad.stride(2), grad.stride(3), total);
      IDIP_KERNEL_LAUNCH_CHECK();
    });
  }
  if (reduced) {
    for (auto& b : buffers) b = b.to(grad.scalar_type());
  }
  return buffers;
}

// The CPU kernel's error for an RoI whose batch index is outside [0, batch_size) (or NaN).
void check_batch_indices(const char* op, const at::Tensor& rois, int64_t batch_size) {
  if (rois.size(0) == 0) return;
  const auto bounds = at::aminmax(rois.select(1, 0));
  const auto host = at::stack({std::get<0>(bounds), std::get<1>(bounds)}).to(at::kDouble).cpu();
  const double lo = host[0].item<double>(), hi = host[1].item<double>();
  TORCH_CHECK(lo >= 0 && hi < static_cast<double>(batch_size), op,
              ": an RoI has batch index ", lo >= 0 ? hi : lo, " outside [0, ", batch_size, ")");
}

at::Tensor roi_align_cuda(const at::Tensor& input, const at::Tensor& rois, int64_t pooled_height,
                          int64_t pooled_width, double spatial_scale, int64_t sampling_ratio,
                          bool aligned) {
  check_roi_align_args(input, rois, pooled_height, pooled_width);
  gpu::DeviceGuard guard(input.device());
  check_batch_indices("roi_align", rois, input.size(0));
  return forward_levels({input.contiguous()}, rois,
                        single_level_table(input.size(2), input.size(3), spatial_scale),
                        pooled_height, pooled_width, sampling_ratio, aligned);
}

at::Tensor roi_align_backward_cuda(const at::Tensor& grad, const at::Tensor& rois,
                                   at::IntArrayRef input_shape, double spatial_scale,
                                   int64_t sampling_ratio, bool aligned) {
  TORCH_CHECK(input_shape.size() == 4, "roi_align_backward: input_shape must be (N, C, H, W)");
  check_grad("roi_align_backward", grad, rois, input_shape[1]);
  gpu::DeviceGuard guard(grad.device());
  check_batch_indices("roi_align_backward", rois, input_shape[0]);
  return backward_levels(grad, rois,
                         single_level_table(input_shape[2], input_shape[3], spatial_scale),
                         input_shape[0], input_shape[1], sampling_ratio, aligned)[0];
}

at::Tensor multilevel_roi_align_cuda(at::TensorList features, const at::Tensor& rois,
                                     int64_t pooled_height, int64_t pooled_width,
                                     at::ArrayRef<double> scales, int64_t sampling_ratio,
                                     bool aligned, double canonical_box_size,
                                     int64_t canonical_level) {
  auto args = prepare_multilevel_forward("multilevel_roi_align", features, rois, pooled_height,
                                         pooled_width, scales, canonical_box_size, canonical_level);
  return forward_levels(args.features, rois, args.table, pooled_height, pooled_width,
                        sampling_ratio, aligned);
}

std::vector<at::Tensor> multilevel_roi_align_backward_cuda(
    const at::Tensor& grad, const at::Tensor& rois, int64_t batch_size, int64_t channels,
    at::IntArrayRef heights, at::IntArrayRef widths, at::ArrayRef<double> scales,
    int64_t sampling_ratio, bool aligned, double canonical_box_size, int64_t canonical_level) {
  auto table = prepare_multilevel_backward("multilevel_roi_align_backward", grad, rois, channels,
                                           heights, widths, scales, canonical_box_size,
                                           canonical_level);
  return backward_levels(grad, rois, table, batch_size, channels, sampling_ratio, aligned);
}

}  // namespace

IDIP_CUDA_KERNELS(m) {
  m.impl("roi_align", &roi_align_cuda);
  m.impl("roi_align_backward", &roi_align_backward_cuda);
  m.impl("multilevel_roi_align", &multilevel_roi_align_cuda);
  m.impl("multilevel_roi_align_backward", &multilevel_roi_align_backward_cuda);
}

}  // namespace idip
