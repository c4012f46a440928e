// box_q_sample on the CPU: forward diffusion of normalised boxes and their absolute xyxy form.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "box_diffusion.h"

namespace idip {
namespace {

template <typename scalar_t>
void box_q_sample_kernel(const scalar_t* x_start, const scalar_t* noise, const int64_t* t,
                         const float* ac_f32, const double* ac_f64, int64_t T,
                         const scalar_t* image_size, scalar_t* x_t, scalar_t* boxes, int64_t B,
                         int64_t N) {
  at::parallel_for(0, B * N, kCpuBoxesPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / N;
      const int64_t step = t[b];
      TORCH_CHECK(step >= 0 && step < T, "box_q_sample: t[", b, "] = ", step,
                  " is outside [0, ", T, ")");
      const scalar_t a = ac_f64 ? static_cast<scalar_t>(ac_f64[step])
                                : static_cast<scalar_t>(ac_f32[step]);
      const scalar_t sa = std::sqrt(a);
      const scalar_t s1a = std::sqrt(scalar_t(1) - a);
      scalar_t x[4];
      for (int k = 0; k < 4; ++k) {
        x[k] = sa * x_start[i * 4 + k] + s1a * noise[i * 4 + k];
        x_t[i * 4 + k] = x[k];
      }
      box_to_abs(x, image_size + b * 4, boxes + i * 4);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> box_q_sample_cpu(const at::Tensor& x_start,
                                                    const at::Tensor& noise, const at::Tensor& t,
                                                    const at::Tensor& alphas_cumprod,
                                                    const at::Tensor& image_size) {
  check_box_q_sample_args(x_start, noise, t, alphas_cumprod, image_size);
  auto xs = x_start.contiguous();
  auto nz = noise.contiguous();
  auto tt = t.contiguous();
  auto ac = alphas_cumprod.contiguous();
  auto sz = image_size.contiguous();
  auto x_t = at::empty_like(xs);
  auto boxes = at::empty_like(xs);
  const int64_t B = xs.size(0), N = xs.size(1);
  AT_DISPATCH_FLOATING_TYPES(xs.scalar_type(), "box_q_sample_cpu", [&] {
    box_q_sample_kernel<scalar_t>(
        xs.data_ptr<scalar_t>(), nz.data_ptr<scalar_t>(), tt.data_ptr<int64_t>(),
        ac.scalar_type() == at::kFloat ? ac.data_ptr<float>() : nullptr,
        ac.scalar_type() == at::kDouble ? ac.data_ptr<double>() : nullptr, ac.numel(),
        sz.data_ptr<scalar_t>(), x_t.data_ptr<scalar_t>(), boxes.data_ptr<scalar_t>(), B, N);
  });
  return {x_t, boxes};
}

}  // namespace

TORCH_LIBRARY_IMPL(idip, CPU, m) { m.impl("box_q_sample", &box_q_sample_cpu); }

}  // namespace idip
