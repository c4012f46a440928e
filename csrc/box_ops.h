// Box helpers shared by the CPU and CUDA diffusion kernels (host and device).
#pragma once

#include <ATen/ATen.h>

#if defined(__CUDACC__)
#define IDIP_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define IDIP_HOST_DEVICE inline
#endif

namespace idip {

template <typename T>
IDIP_HOST_DEVICE T clamp01(T v) {
  return v < T(0) ? T(0) : (v > T(1) ? T(1) : v);
}

// to_abs of DESIGN.md: x (normalised cxcywh in [-1, 1]) -> absolute xyxy in the image.
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

}  // namespace idip
