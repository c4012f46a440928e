// box_q_sample on CUDA: one thread per box, one launch, no host synchronisation.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "compat.h"

#include "box_diffusion.h"

namespace idip {
namespace {

template <typename scalar_t>
__global__ void box_q_sample_kernel(const scalar_t* __restrict__ x_start,
                                    const scalar_t* __restrict__ noise,
                                    const int64_t* __restrict__ t, const float* ac_f32,
                                    const double* ac_f64, int64_t T,
                                    const scalar_t* __restrict__ image_size,
                                    scalar_t* __restrict__ x_t, scalar_t* __restrict__ boxes,
                                    int64_t total, int64_t N) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t b = i / N;
    const int64_t step = t[b];
    IDIP_KERNEL_ASSERT(step >= 0 && step < T);
    const scalar_t a_s = ac_f64 ? static_cast<scalar_t>(ac_f64[step])
                                : static_cast<scalar_t>(ac_f32[step]);
    const acc_t a = static_cast<acc_t>(a_s);
    const acc_t sa = sqrt(a);
    const acc_t s1a = sqrt(acc_t(1) - a);
    acc_t x[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      x[k] = sa * static_cast<acc_t>(x_start[i * 4 + k]) + s1a * static_cast<acc_t>(noise[i * 4 + k]);
      x_t[i * 4 + k] = static_cast<scalar_t>(x[k]);
    }
    box_to_abs(x, image_size + b * 4, boxes + i * 4);
  }
}

std::tuple<at::Tensor, at::Tensor> box_q_sample_cuda(const at::Tensor& x_start,
                                                     const at::Tensor& noise, const at::Tensor& t,
                                                     const at::Tensor& alphas_cumprod,
                                                     const at::Tensor& image_size) {
  check_box_q_sample_args(x_start, noise, t, alphas_cumprod, image_size);
  gpu::DeviceGuard guard(x_start.device());
  auto xs = x_start.contiguous();
  auto nz = noise.contiguous();
  auto tt = t.contiguous();
  auto ac = alphas_cumprod.contiguous();
  auto sz = image_size.contiguous();
  auto x_t = at::empty_like(xs);
  auto boxes = at::empty_like(xs);
  const int64_t B = xs.size(0), N = xs.size(1), total = B * N;
  if (total == 0) return {x_t, boxes};
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((total + threads - 1) / threads, 65535);
  const auto stream = gpu::current_stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xs.scalar_type(), "box_q_sample_cuda", [&] {
    IDIP_LAUNCH_KERNEL(box_q_sample_kernel<scalar_t>, blocks, threads, 0, stream,
        xs.data_ptr<scalar_t>(), nz.data_ptr<scalar_t>(), tt.data_ptr<int64_t>(),
        ac.scalar_type() == at::kFloat ? ac.data_ptr<float>() : nullptr,
        ac.scalar_type() == at::kDouble ? ac.data_ptr<double>() : nullptr, ac.numel(),
        sz.data_ptr<scalar_t>(), x_t.data_ptr<scalar_t>(), boxes.data_ptr<scalar_t>(), total, N);
    IDIP_KERNEL_LAUNCH_CHECK();
  });
  return {x_t, boxes};
}

}  // namespace

IDIP_CUDA_KERNELS(m) { m.impl("box_q_sample", &box_q_sample_cuda); }

}  // namespace idip
