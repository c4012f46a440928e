// box_ddim_step on the CPU: one DDIM update of every image's boxes, fused with box renewal.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "box_diffusion.h"

namespace idip {
namespace {

template <typename scalar_t>
void box_ddim_step_kernel(const scalar_t* x_t, const scalar_t* pred_boxes,
                          const scalar_t* image_size, const bool* keep, const scalar_t* noise,
                          const scalar_t* renew, const DdimCoefficients& k, scalar_t* x_next,
                          scalar_t* boxes_next, int64_t B, int64_t N) {
  const scalar_t sa = static_cast<scalar_t>(k.sqrt_alpha);
  const scalar_t s1a = static_cast<scalar_t>(k.sqrt_one_minus_alpha);
  const scalar_t sa_next = static_cast<scalar_t>(k.sqrt_alpha_next);
  const scalar_t c = static_cast<scalar_t>(k.c);
  const scalar_t sigma = static_cast<scalar_t>(k.sigma);
  // Images are independent; within an image the kept rows are compacted in order by one scan.
  const int64_t grain = std::max<int64_t>(1, kCpuBoxesPerTask / std::max<int64_t>(N, 1));
  at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const scalar_t* size_b = image_size + b * 4;
      const int64_t base = b * N;
      int64_t kept = 0;
      for (int64_t n = 0; n < N; ++n) {
        if (!keep[base + n]) continue;
        const int64_t src = (base + n) * 4;
        const int64_t dst = (base + kept) * 4;
        scalar_t x0[4];
        box_abs_to_signal(pred_boxes + src, size_b, x0);
        scalar_t x[4];
        for (int j = 0; j < 4; ++j) {
          const scalar_t eps = (x_t[src + j] - sa * x0[j]) / s1a;
          x[j] = sa_next * x0[j] + c * eps + sigma * noise[src + j];
          x_next[dst + j] = x[j];
        }
        box_to_abs(x, size_b, boxes_next + dst);
        ++kept;
      }
      for (int64_t n = kept; n < N; ++n) {
        const int64_t src = (base + n - kept) * 4;
        const int64_t dst = (base + n) * 4;
        scalar_t x[4];
        for (int j = 0; j < 4; ++j) {
          x[j] = renew[src + j];
          x_next[dst + j] = x[j];
        }
        box_to_abs(x, size_b, boxes_next + dst);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> box_ddim_step_cpu(const at::Tensor& x_t,
                                                     const at::Tensor& pred_boxes,
                                                     const at::Tensor& image_size, double alpha,
                                                     double alpha_next, double eta,
                                                     const at::Tensor& keep,
                                                     const at::Tensor& noise,
                                                     const at::Tensor& renew) {
  check_box_ddim_step_args(x_t, pred_boxes, image_size, keep, noise, renew);
  const DdimCoefficients k = ddim_coefficients(alpha, alpha_next, eta);
  auto xt = x_t.contiguous();
  auto pb = pred_boxes.contiguous();
  auto sz = image_size.contiguous();
  auto kp = keep.contiguous();
  auto nz = noise.contiguous();
  auto rn = renew.contiguous();
  auto x_next = at::empty_like(xt);
  auto boxes_next = at::empty_like(xt);
  const int64_t B = xt.size(0), N = xt.size(1);
  AT_DISPATCH_FLOATING_TYPES(xt.scalar_type(), "box_ddim_step_cpu", [&] {
    box_ddim_step_kernel<scalar_t>(xt.data_ptr<scalar_t>(), pb.data_ptr<scalar_t>(),
                                   sz.data_ptr<scalar_t>(), kp.data_ptr<bool>(),
                                   nz.data_ptr<scalar_t>(), rn.data_ptr<scalar_t>(), k,
                                   x_next.data_ptr<scalar_t>(), boxes_next.data_ptr<scalar_t>(),
                                   B, N);
  });
  return {x_next, boxes_next};
}

}  // namespace

TORCH_LIBRARY_IMPL(idip, CPU, m) { m.impl("box_ddim_step", &box_ddim_step_cpu); }

}  // namespace idip
