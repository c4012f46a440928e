// aligned_upsample on the CPU: CondInst's aligned_bilinear computed directly from its source taps.
//
// Forward: one pass over output rows (parallel over planes x rows), column taps precomputed.
// Backward: the transpose, separably: each output row is scattered into a row buffer along x and
// the buffer is added to its two source rows; planes are independent, so parallel over planes.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "condinst_ops.h"

namespace idip {
namespace {

template <typename acc_t>
struct Taps {
  std::vector<int64_t> i0, i1;
  std::vector<acc_t> lambda;
  Taps(int64_t out_size, int64_t factor, int64_t in_size) : i0(out_size), i1(out_size), lambda(out_size) {
    for (int64_t o = 0; o < out_size; ++o) {
      aligned_upsample_taps<acc_t>(o, factor, in_size, &i0[o], &i1[o], &lambda[o]);
    }
  }
};

template <typename scalar_t>
void forward_kernel(const scalar_t* in, scalar_t* out, int64_t planes, int64_t H, int64_t W,
                    int64_t factor) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t OH = H * factor, OW = W * factor;
  const Taps<acc_t> tx(OW, factor, W), ty(OH, factor, H);
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(OW, 1));
  at::parallel_for(0, planes * OH, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t plane = row / OH, oy = row % OH;
      const scalar_t* r0 = in + (plane * H + ty.i0[oy]) * W;
      const scalar_t* r1 = in + (plane * H + ty.i1[oy]) * W;
      const acc_t a = ty.lambda[oy];
      scalar_t* dst = out + row * OW;
      for (int64_t ox = 0; ox < OW; ++ox) {
        const int64_t x0 = tx.i0[ox], x1 = tx.i1[ox];
        const acc_t b = tx.lambda[ox];
        const acc_t top = (acc_t(1) - b) * static_cast<acc_t>(r0[x0]) + b * static_cast<acc_t>(r0[x1]);
        const acc_t bot = (acc_t(1) - b) * static_cast<acc_t>(r1[x0]) + b * static_cast<acc_t>(r1[x1]);
        dst[ox] = static_cast<scalar_t>((acc_t(1) - a) * top + a * bot);
      }
    }
  });
}

template <typename scalar_t>
void backward_kernel(const scalar_t* grad, scalar_t* grad_in, int64_t planes, int64_t H,
                     int64_t W, int64_t factor) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t OH = H * factor, OW = W * factor;
  const Taps<acc_t> tx(OW, factor, W), ty(OH, factor, H);
  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> row(W), acc(H * W);
    for (int64_t plane = begin; plane < end; ++plane) {
      std::fill(acc.begin(), acc.end(), acc_t(0));
      for (int64_t oy = 0; oy < OH; ++oy) {
        const scalar_t* g = grad + (plane * OH + oy) * OW;
        std::fill(row.begin(), row.end(), acc_t(0));
        for (int64_t ox = 0; ox < OW; ++ox) {
          const acc_t v = static_cast<acc_t>(g[ox]);
          const acc_t b = tx.lambda[ox];
          row[tx.i0[ox]] += (acc_t(1) - b) * v;
          row[tx.i1[ox]] += b * v;
        }
        const acc_t a = ty.lambda[oy];
        acc_t* d0 = acc.data() + ty.i0[oy] * W;
        acc_t* d1 = acc.data() + ty.i1[oy] * W;
        for (int64_t x = 0; x < W; ++x) d0[x] += (acc_t(1) - a) * row[x];
        for (int64_t x = 0; x < W; ++x) d1[x] += a * row[x];
      }
      scalar_t* dst = grad_in + plane * H * W;
      for (int64_t k = 0; k < H * W; ++k) dst[k] = static_cast<scalar_t>(acc[k]);
    }
  });
}

at::Tensor aligned_upsample_cpu(const at::Tensor& x, int64_t factor) {
  check_aligned_upsample_args(x, factor, "x");
  auto input = x.contiguous();
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  auto out = at::empty({N, C, H * factor, W * factor}, input.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "aligned_upsample_cpu", [&] {
    forward_kernel<scalar_t>(input.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), N * C, H, W,
                             factor);
  });
  return out;
}

at::Tensor aligned_upsample_backward_cpu(const at::Tensor& grad, int64_t factor, int64_t height,
                                         int64_t width) {
  check_aligned_upsample_backward_args(grad, factor, height, width);
  auto g = grad.contiguous();
  const int64_t N = g.size(0), C = g.size(1);
  auto grad_in = at::empty({N, C, height, width}, g.options());
  if (grad_in.numel() == 0) return grad_in;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(),
                                  "aligned_upsample_backward_cpu", [&] {
    backward_kernel<scalar_t>(g.data_ptr<scalar_t>(), grad_in.data_ptr<scalar_t>(), N * C, height,
                              width, factor);
  });
  return grad_in;
}

}  // namespace

TORCH_LIBRARY_IMPL(idip, CPU, m) {
  m.impl("aligned_upsample", &aligned_upsample_cpu);
  m.impl("aligned_upsample_backward", &aligned_upsample_backward_cpu);
}

}  // namespace idip
