// aligned_upsample helpers shared by the CPU and CUDA kernels: CondInst's aligned_bilinear as
// source taps. The index math is host/device so both back ends agree exactly.
#pragma once

#include <ATen/ATen.h>

#include "macros.h"

namespace idip {

// Source taps of output index `o` (along one axis of length `in_size`) of CondInst's
// aligned_bilinear with integer `factor`: replicate-pad one pixel at the end, align_corners
// bilinear resize to factor*in+1, replicate-pad factor//2 at the start, crop to factor*in.
// The resize maps resized index j to source j/factor, so the output is
// (1-lambda)*in[i0] + lambda*in[i1] with j = max(o - factor//2, 0), i0 = j / factor,
// lambda = (j % factor) / factor, i1 = min(i0 + 1, in_size - 1) (the end pad replicates).
template <typename acc_t>
IDIP_HOST_DEVICE void aligned_upsample_taps(int64_t o, int64_t factor, int64_t in_size,
                                            int64_t* i0, int64_t* i1, acc_t* lambda) {
  const int64_t shifted = o - factor / 2;
  const int64_t j = shifted > 0 ? shifted : 0;
  *i0 = j / factor;
  *i1 = *i0 + 1 < in_size ? *i0 + 1 : in_size - 1;
  *lambda = static_cast<acc_t>(j - *i0 * factor) / static_cast<acc_t>(factor);
}

// The range [*lo, *hi] of output indices whose taps can touch source index `i` (for the
// gather form of the backward pass): resized indices j in [factor*(i-1), factor*(i+1)-1].
IDIP_HOST_DEVICE void aligned_upsample_window(int64_t i, int64_t factor, int64_t in_size,
                                              int64_t* lo, int64_t* hi) {
  const int64_t pad = factor / 2;
  const int64_t j_lo = factor * (i - 1) > 0 ? factor * (i - 1) : 0;
  const int64_t j_hi = factor * (i + 1) - 1;
  *lo = j_lo == 0 ? 0 : j_lo + pad;
  const int64_t last = factor * in_size - 1;
  *hi = j_hi + pad < last ? j_hi + pad : last;
}

inline void check_aligned_upsample_args(const at::Tensor& x, int64_t factor, const char* name) {
  TORCH_CHECK(x.dim() == 4, "aligned_upsample: ", name, " must be [N, C, H, W], got ", x.sizes());
  TORCH_CHECK(factor >= 1, "aligned_upsample: factor must be an integer >= 1, got ", factor);
  TORCH_CHECK(x.is_floating_point(), "aligned_upsample: ", name,
              " must be a floating-point tensor, got ", x.scalar_type());
}

inline void check_aligned_upsample_backward_args(const at::Tensor& grad, int64_t factor,
                                                 int64_t height, int64_t width) {
  check_aligned_upsample_args(grad, factor, "grad");
  TORCH_CHECK(height >= 0 && width >= 0 && grad.size(2) == factor * height &&
                  grad.size(3) == factor * width,
              "aligned_upsample_backward: grad must be [N, C, factor*height, factor*width] = [*, *, ",
              factor * height, ", ", factor * width, "], got ", grad.sizes());
}

}  // namespace idip
