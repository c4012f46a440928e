// aligned_upsample on the CPU: CondInst's aligned_bilinear computed directly from its source taps.
//
// Forward: parallel over (plane, output row): blend the two source rows, then expand along x.
// Backward: the transpose, separably: each output row is scattered into a row buffer along x and
// the buffer is added to its two source rows; planes are independent, so parallel over planes.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "aligned_upsample.h"
#include "huge_pages.h"

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

// Expands one blended row t[0..W] (t[W] = t[W-1], the right replicate pad) along x into dst:
// resized column j = ox - factor/2 (>= 0) is (1-b)*t[j/factor] + b*t[j/factor+1] with
// b = (j % factor)/factor; columns ox <= factor/2 all read t[0]. FACTOR > 0 fixes the factor at
// compile time so the middle columns (no bounds to check) unroll and vectorise.
template <int FACTOR, typename acc_t, typename scalar_t>
inline void expand_row(const acc_t* t, int64_t W, int64_t runtime_factor, const acc_t* w0,
                       const acc_t* w1, scalar_t* dst) {
  const int64_t factor = FACTOR > 0 ? FACTOR : runtime_factor;
  const int64_t pad = factor / 2, OW = W * factor;
  auto column = [&](int64_t j) {
    const int64_t x = j / factor, k = j - x * factor;
    dst[j + pad] = static_cast<scalar_t>(w0[k] * t[x] + w1[k] * t[x + 1]);
  };
  for (int64_t ox = 0; ox <= pad && ox < OW; ++ox) dst[ox] = static_cast<scalar_t>(t[0]);
  // Source column 0 (j = 1..factor-1) and the last one (j from (W-1)*factor) check bounds.
  for (int64_t j = 1; j < factor && j + pad < OW; ++j) column(j);
  for (int64_t x = 1; x + 1 < W; ++x) {
    const acc_t t0 = t[x], t1 = t[x + 1];
    scalar_t* d = dst + x * factor + pad;
    for (int64_t k = 0; k < factor; ++k) d[k] = static_cast<scalar_t>(w0[k] * t0 + w1[k] * t1);
  }
  if (W > 1) {
    for (int64_t j = (W - 1) * factor; j + pad < OW; ++j) column(j);
  }
}

// Each output row is the blend of two source rows (W wide, in a row buffer), then expanded.
template <typename scalar_t>
void aligned_upsample_forward_kernel(const scalar_t* in, scalar_t* out, int64_t planes,
                                     int64_t H, int64_t W, int64_t factor) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t OH = H * factor, OW = W * factor;
  const Taps<acc_t> ty(OH, factor, H);
  std::vector<acc_t> w0(factor), w1(factor);
  for (int64_t k = 0; k < factor; ++k) {
    w1[k] = static_cast<acc_t>(k) / static_cast<acc_t>(factor);
    w0[k] = acc_t(1) - w1[k];
  }
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(OW, 1));
  at::parallel_for(0, planes * OH, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> blended(W + 1);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t plane = row / OH, oy = row % OH;
      const scalar_t* r0 = in + (plane * H + ty.i0[oy]) * W;
      const scalar_t* r1 = in + (plane * H + ty.i1[oy]) * W;
      const acc_t a = ty.lambda[oy];
      acc_t* t = blended.data();
      for (int64_t x = 0; x < W; ++x) {
        t[x] = (acc_t(1) - a) * static_cast<acc_t>(r0[x]) + a * static_cast<acc_t>(r1[x]);
      }
      t[W] = t[W - 1];
      scalar_t* dst = out + row * OW;
      switch (factor) {
        case 2: expand_row<2>(t, W, factor, w0.data(), w1.data(), dst); break;
        case 4: expand_row<4>(t, W, factor, w0.data(), w1.data(), dst); break;
        case 8: expand_row<8>(t, W, factor, w0.data(), w1.data(), dst); break;
        default: expand_row<0>(t, W, factor, w0.data(), w1.data(), dst); break;
      }
    }
  });
}

template <typename scalar_t>
void aligned_upsample_backward_kernel(const scalar_t* grad, scalar_t* grad_in, int64_t planes,
                                      int64_t H, int64_t W, int64_t factor) {
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
  advise_huge_pages(out);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "aligned_upsample_cpu", [&] {
    aligned_upsample_forward_kernel<scalar_t>(input.data_ptr<scalar_t>(),
                                              out.data_ptr<scalar_t>(), N * C, H, W, factor);
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
  advise_huge_pages(grad_in);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(),
                                  "aligned_upsample_backward_cpu", [&] {
    aligned_upsample_backward_kernel<scalar_t>(g.data_ptr<scalar_t>(),
                                               grad_in.data_ptr<scalar_t>(), N * C, height,
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
