// Diffusion box helpers shared by the CPU and CUDA kernels of box_q_sample and box_ddim_step:
// the box transforms (host and device), the DDIM coefficients and the argument checks.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <utility>

#include "macros.h"

namespace idip {

// Boxes per CPU task: smaller batches (the usual 16 x 300) stay on one thread, since waking an
// OpenMP team costs more than their few dozen flops a box (see benchmarks/README.md).
constexpr int64_t kCpuBoxesPerTask = 16384;

template <typename T>
IDIP_HOST_DEVICE T clamp01(T v) {
  return v < T(0) ? T(0) : (v > T(1) ? T(1) : v);
}

// to_abs of the op contract (docs/design.md): x (normalised cxcywh in [-1, 1]) -> absolute xyxy
// in the image.
// clamp((x+1)/2, 0, 1); w, h >= 1e-4; cxcywh -> xyxy; clip to [0, 1]; times (w, h, w, h).
template <typename T, typename S>
IDIP_HOST_DEVICE void box_to_abs(const T x[4], const S* image_size, S* out) {
  const T cx = clamp01((x[0] + T(1)) / T(2));
  const T cy = clamp01((x[1] + T(1)) / T(2));
  T w = clamp01((x[2] + T(1)) / T(2));
  T h = clamp01((x[3] + T(1)) / T(2));
  w = w < T(1e-4) ? T(1e-4) : w;
  h = h < T(1e-4) ? T(1e-4) : h;
  out[0] = static_cast<S>(clamp01(cx - T(0.5) * w) * static_cast<T>(image_size[0]));
  out[1] = static_cast<S>(clamp01(cy - T(0.5) * h) * static_cast<T>(image_size[1]));
  out[2] = static_cast<S>(clamp01(cx + T(0.5) * w) * static_cast<T>(image_size[2]));
  out[3] = static_cast<S>(clamp01(cy + T(0.5) * h) * static_cast<T>(image_size[3]));
}

inline void check_box_q_sample_args(const at::Tensor& x_start, const at::Tensor& noise,
                                    const at::Tensor& t, const at::Tensor& alphas_cumprod,
                                    const at::Tensor& image_size) {
  TORCH_CHECK(x_start.dim() == 3 && x_start.size(2) == 4,
              "box_q_sample: x_start must be [B, N, 4], got ", x_start.sizes());
  TORCH_CHECK(noise.sizes() == x_start.sizes(), "box_q_sample: noise must match x_start ",
              x_start.sizes(), ", got ", noise.sizes());
  TORCH_CHECK(noise.scalar_type() == x_start.scalar_type() &&
                  image_size.scalar_type() == x_start.scalar_type(),
              "box_q_sample: x_start, noise and image_size must share a dtype");
  TORCH_CHECK(t.dim() == 1 && t.size(0) == x_start.size(0) && t.scalar_type() == at::kLong,
              "box_q_sample: t must be int64 [B] with B = ", x_start.size(0), ", got ",
              t.scalar_type(), " ", t.sizes());
  TORCH_CHECK(alphas_cumprod.dim() == 1 && alphas_cumprod.numel() > 0 &&
                  (alphas_cumprod.scalar_type() == at::kFloat ||
                   alphas_cumprod.scalar_type() == at::kDouble),
              "box_q_sample: alphas_cumprod must be a non-empty float32/float64 [T] tensor");
  TORCH_CHECK(image_size.dim() == 2 && image_size.size(0) == x_start.size(0) &&
                  image_size.size(1) == 4,
              "box_q_sample: image_size must be [B, 4] (w, h, w, h), got ", image_size.sizes());
  for (const auto* other : {&noise, &t, &alphas_cumprod, &image_size}) {
    TORCH_CHECK(other->device() == x_start.device(),
                "box_q_sample: all tensors must be on ", x_start.device());
  }
}


// x0 of box_ddim_step: absolute xyxy prediction -> normalised cxcywh in [0, 1] -> [-1, 1].
template <typename T, typename S>
IDIP_HOST_DEVICE void box_abs_to_signal(const S* pred_xyxy, const S* image_size, T x0[4]) {
  const T x1 = static_cast<T>(pred_xyxy[0]) / static_cast<T>(image_size[0]);
  const T y1 = static_cast<T>(pred_xyxy[1]) / static_cast<T>(image_size[1]);
  const T x2 = static_cast<T>(pred_xyxy[2]) / static_cast<T>(image_size[2]);
  const T y2 = static_cast<T>(pred_xyxy[3]) / static_cast<T>(image_size[3]);
  x0[0] = clamp01((x1 + x2) / T(2)) * T(2) - T(1);
  x0[1] = clamp01((y1 + y2) / T(2)) * T(2) - T(1);
  x0[2] = clamp01(x2 - x1) * T(2) - T(1);
  x0[3] = clamp01(y2 - y1) * T(2) - T(1);
}

// The scalars of one DDIM update, computed once on the host in double precision.
struct DdimCoefficients {
  double sqrt_alpha;            // sqrt(alpha)
  double sqrt_one_minus_alpha;  // sqrt(1 - alpha)
  double sqrt_alpha_next;       // sqrt(alpha_next)
  double c;                     // sqrt(1 - alpha_next - sigma^2)
  double sigma;                 // eta * sqrt(1 - alpha/alpha_next) * sqrt((1 - alpha_next)/(1 - alpha))
};

inline DdimCoefficients ddim_coefficients(double alpha, double alpha_next, double eta) {
  TORCH_CHECK(alpha > 0.0 && alpha < 1.0, "box_ddim_step: alpha must be in (0, 1), got ", alpha);
  TORCH_CHECK(alpha_next > 0.0 && alpha_next <= 1.0,
              "box_ddim_step: alpha_next must be in (0, 1], got ", alpha_next);
  TORCH_CHECK(eta >= 0.0, "box_ddim_step: eta must be >= 0, got ", eta);
  TORCH_CHECK(eta == 0.0 || alpha <= alpha_next,
              "box_ddim_step: with eta > 0, alpha_next (", alpha_next,
              ") must be >= alpha (", alpha, "): the next time is the less noisy one");
  DdimCoefficients k;
  k.sqrt_alpha = std::sqrt(alpha);
  k.sqrt_one_minus_alpha = std::sqrt(1.0 - alpha);
  k.sqrt_alpha_next = std::sqrt(alpha_next);
  k.sigma = eta == 0.0 ? 0.0
                       : eta * std::sqrt(1.0 - alpha / alpha_next) *
                             std::sqrt((1.0 - alpha_next) / (1.0 - alpha));
  const double c2 = 1.0 - alpha_next - k.sigma * k.sigma;
  // c2 is >= 0 in exact arithmetic for eta <= 1; allow rounding noise, reject a too large eta.
  TORCH_CHECK(c2 >= -1e-12, "box_ddim_step: eta = ", eta,
              " is too large: 1 - alpha_next - sigma^2 = ", c2, " < 0");
  k.c = c2 > 0.0 ? std::sqrt(c2) : 0.0;
  return k;
}

inline void check_box_ddim_step_args(const at::Tensor& x_t, const at::Tensor& pred_boxes,
                                     const at::Tensor& image_size, const at::Tensor& keep,
                                     const at::Tensor& noise, const at::Tensor& renew) {
  TORCH_CHECK(x_t.dim() == 3 && x_t.size(2) == 4,
              "box_ddim_step: x_t must be [B, N, 4], got ", x_t.sizes());
  const auto dtype = x_t.scalar_type();
  const std::pair<const char*, const at::Tensor*> same_shape[] = {
      {"pred_boxes", &pred_boxes}, {"noise", &noise}, {"renew", &renew}};
  for (const auto& [name, tensor] : same_shape) {
    TORCH_CHECK(tensor->sizes() == x_t.sizes(), "box_ddim_step: ", name, " must match x_t ",
                x_t.sizes(), ", got ", tensor->sizes());
    TORCH_CHECK(tensor->scalar_type() == dtype, "box_ddim_step: ", name, " must have x_t's dtype ",
                dtype, ", got ", tensor->scalar_type());
  }
  TORCH_CHECK(image_size.dim() == 2 && image_size.size(0) == x_t.size(0) && image_size.size(1) == 4,
              "box_ddim_step: image_size must be [B, 4] (w, h, w, h) with B = ", x_t.size(0),
              ", got ", image_size.sizes());
  TORCH_CHECK(image_size.scalar_type() == dtype, "box_ddim_step: image_size must have x_t's dtype ",
              dtype, ", got ", image_size.scalar_type());
  TORCH_CHECK(keep.dim() == 2 && keep.size(0) == x_t.size(0) && keep.size(1) == x_t.size(1),
              "box_ddim_step: keep must be [B, N] = [", x_t.size(0), ", ", x_t.size(1), "], got ",
              keep.sizes());
  TORCH_CHECK(keep.scalar_type() == at::kBool, "box_ddim_step: keep must be bool, got ",
              keep.scalar_type());
  const std::pair<const char*, const at::Tensor*> others[] = {{"pred_boxes", &pred_boxes},
                                                              {"image_size", &image_size},
                                                              {"keep", &keep},
                                                              {"noise", &noise},
                                                              {"renew", &renew}};
  for (const auto& [name, tensor] : others) {
    TORCH_CHECK(tensor->device() == x_t.device(), "box_ddim_step: ", name, " must be on ",
                x_t.device(), " like x_t, got ", tensor->device());
  }
}

}  // namespace idip
