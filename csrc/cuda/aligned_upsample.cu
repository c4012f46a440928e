// aligned_upsample on CUDA: CondInst's aligned_bilinear computed directly from its source taps.
//
// Forward: one thread per output element. Backward: one thread per input element gathering the
// outputs whose taps touch it (a window of about 2*factor + factor/2 per axis), so there are no
// atomics and the result is deterministic. Half/bfloat16 accumulate in float.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "compat.h"

#include "aligned_upsample.h"

namespace idip {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t>
__global__ void aligned_upsample_forward_kernel(const scalar_t* __restrict__ in,
                                                scalar_t* __restrict__ out, int64_t total,
                                                int64_t H, int64_t W, int64_t factor) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t OH = H * factor, OW = W * factor;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t ox = idx % OW;
    const int64_t oy = (idx / OW) % OH;
    const int64_t plane = idx / (OW * OH);
    int64_t y0, y1, x0, x1;
    acc_t a, b;
    aligned_upsample_taps<acc_t>(oy, factor, H, &y0, &y1, &a);
    aligned_upsample_taps<acc_t>(ox, factor, W, &x0, &x1, &b);
    const scalar_t* src = in + plane * H * W;
    const acc_t top = (acc_t(1) - b) * static_cast<acc_t>(src[y0 * W + x0]) +
                      b * static_cast<acc_t>(src[y0 * W + x1]);
    const acc_t bot = (acc_t(1) - b) * static_cast<acc_t>(src[y1 * W + x0]) +
                      b * static_cast<acc_t>(src[y1 * W + x1]);
    out[idx] = static_cast<scalar_t>((acc_t(1) - a) * top + a * bot);
  }
}

// Weight with which output index o (one axis) reads source index i.
template <typename acc_t>
__device__ __forceinline__ acc_t tap_weight(int64_t o, int64_t i, int64_t factor, int64_t size) {
  int64_t i0, i1;
  acc_t lambda;
  aligned_upsample_taps<acc_t>(o, factor, size, &i0, &i1, &lambda);
  return (i0 == i ? acc_t(1) - lambda : acc_t(0)) + (i1 == i ? lambda : acc_t(0));
}

template <typename scalar_t>
__global__ void aligned_upsample_backward_kernel(const scalar_t* __restrict__ grad,
                                                 scalar_t* __restrict__ grad_in, int64_t total,
                                                 int64_t H, int64_t W, int64_t factor) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t OH = H * factor, OW = W * factor;
  for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < total;
       idx += (int64_t)gridDim.x * blockDim.x) {
    const int64_t x = idx % W;
    const int64_t y = (idx / W) % H;
    const int64_t plane = idx / (W * H);
    int64_t oy_lo, oy_hi, ox_lo, ox_hi;
    aligned_upsample_window(y, factor, H, &oy_lo, &oy_hi);
    aligned_upsample_window(x, factor, W, &ox_lo, &ox_hi);
    const scalar_t* g = grad + plane * OH * OW;
    acc_t sum = 0;
    for (int64_t oy = oy_lo; oy <= oy_hi; ++oy) {
      const acc_t wy = tap_weight<acc_t>(oy, y, factor, H);
      if (wy == acc_t(0)) continue;
      acc_t row = 0;
      for (int64_t ox = ox_lo; ox <= ox_hi; ++ox) {
        row += tap_weight<acc_t>(ox, x, factor, W) * static_cast<acc_t>(g[oy * OW + ox]);
      }
      sum += wy * row;
    }
    grad_in[idx] = static_cast<scalar_t>(sum);
  }
}

int64_t num_blocks(int64_t total) {
  return std::max<int64_t>(1, std::min<int64_t>((total + kThreads - 1) / kThreads, 1 << 20));
}

at::Tensor aligned_upsample_cuda(const at::Tensor& x, int64_t factor) {
  check_aligned_upsample_args(x, factor, "x");
  gpu::DeviceGuard guard(x.device());
  auto input = x.contiguous();
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  auto out = at::empty({N, C, H * factor, W * factor}, input.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  const auto stream = gpu::current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "aligned_upsample_cuda", [&] {
    IDIP_LAUNCH_KERNEL(aligned_upsample_forward_kernel<scalar_t>, num_blocks(total), kThreads, 0,
                       stream, input.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), total, H, W,
                       factor);
    IDIP_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor aligned_upsample_backward_cuda(const at::Tensor& grad, int64_t factor, int64_t height,
                                          int64_t width) {
  check_aligned_upsample_backward_args(grad, factor, height, width);
  gpu::DeviceGuard guard(grad.device());
  auto g = grad.contiguous();
  auto grad_in = at::empty({g.size(0), g.size(1), height, width}, g.options());
  const int64_t total = grad_in.numel();
  if (total == 0) return grad_in;
  const auto stream = gpu::current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(),
                                  "aligned_upsample_backward_cuda", [&] {
    IDIP_LAUNCH_KERNEL(aligned_upsample_backward_kernel<scalar_t>, num_blocks(total), kThreads, 0,
                       stream, g.data_ptr<scalar_t>(), grad_in.data_ptr<scalar_t>(), total, height,
                       width, factor);
    IDIP_KERNEL_LAUNCH_CHECK();
  });
  return grad_in;
}

}  // namespace

IDIP_CUDA_KERNELS(m) {
  m.impl("aligned_upsample", &aligned_upsample_cuda);
  m.impl("aligned_upsample_backward", &aligned_upsample_backward_cuda);
}

}  // namespace idip
