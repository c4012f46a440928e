// Helpers shared by the CPU and CUDA kernels of CondInst's ops: aligned_upsample (op 4) and the
// fused dynamic_mask_head (op 5). Index math is host/device so both back ends agree exactly.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#if defined(__CUDACC__)
#define IDIP_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define IDIP_HOST_DEVICE inline
#endif

namespace idip {

// ---- aligned_upsample ------------------------------------------------------------------------

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

// ---- dynamic_mask_head -----------------------------------------------------------------------

// The params layout of CondInst (AdelaiDet's parse_dynamic_params): all layer weights first,
// then all biases. Layer l maps in_l -> out_l with in_0 = C_in (+2 with relative coordinates),
// in_l = channels otherwise, out_l = 1 for the last layer and channels otherwise; its weight
// block is [out_l, in_l] row-major.
struct MaskHeadLayout {
  int64_t in0 = 0;
  int64_t channels = 0;
  int64_t num_layers = 0;
  int64_t num_params = 0;
  std::vector<int64_t> weight_offset;  // [num_layers]
  std::vector<int64_t> bias_offset;    // [num_layers]

  MaskHeadLayout(int64_t feat_channels, int64_t channels_, int64_t num_layers_, bool rel_coords)
      : in0(feat_channels + (rel_coords ? 2 : 0)), channels(channels_), num_layers(num_layers_) {
    int64_t w = 0;
    for (int64_t l = 0; l < num_layers; ++l) {
      weight_offset.push_back(w);
      w += in(l) * out(l);
    }
    int64_t b = w;
    for (int64_t l = 0; l < num_layers; ++l) {
      bias_offset.push_back(b);
      b += out(l);
    }
    num_params = b;
  }
  int64_t in(int64_t l) const { return l == 0 ? in0 : channels; }
  int64_t out(int64_t l) const { return l == num_layers - 1 ? 1 : channels; }
};

inline MaskHeadLayout check_dynamic_mask_head_args(const char* op, const at::Tensor& mask_feats,
                                                   const at::Tensor& params,
                                                   const at::Tensor& im_inds,
                                                   const at::Tensor& locations,
                                                   const at::Tensor& soi, int64_t mask_stride,
                                                   int64_t channels, int64_t num_layers,
                                                   bool rel_coords) {
  TORCH_CHECK(mask_feats.dim() == 4, op, ": mask_feats must be [B, C, H, W], got ",
              mask_feats.sizes());
  TORCH_CHECK(mask_feats.is_floating_point(), op, ": mask_feats must be floating point, got ",
              mask_feats.scalar_type());
  TORCH_CHECK(channels >= 1, op, ": channels must be >= 1, got ", channels);
  TORCH_CHECK(num_layers >= 1, op, ": num_layers must be >= 1, got ", num_layers);
  TORCH_CHECK(mask_stride >= 1, op, ": mask_stride must be >= 1, got ", mask_stride);
  MaskHeadLayout layout(mask_feats.size(1), channels, num_layers, rel_coords);
  TORCH_CHECK(params.dim() == 2, op, ": params must be [N, P], got ", params.sizes());
  TORCH_CHECK(params.size(1) == layout.num_params, op, ": params must have P = ",
              layout.num_params, " columns for mask_feats with ", mask_feats.size(1),
              " channels, channels=", channels, ", num_layers=", num_layers,
              ", rel_coords=", rel_coords ? "True" : "False", "; got params of shape ",
              params.sizes());
  TORCH_CHECK(params.scalar_type() == mask_feats.scalar_type(), op,
              ": params must have the dtype of mask_feats (", mask_feats.scalar_type(),
              "), got ", params.scalar_type());
  const int64_t N = params.size(0);
  TORCH_CHECK(im_inds.dim() == 1 && im_inds.size(0) == N && !im_inds.is_floating_point() &&
                  im_inds.scalar_type() != at::kBool,
              op, ": im_inds must be an integer [N] tensor with N = ", N, ", got ",
              im_inds.scalar_type(), " ", im_inds.sizes());
  TORCH_CHECK(locations.dim() == 2 && locations.size(0) == N && locations.size(1) == 2 &&
                  locations.is_floating_point(),
              op, ": locations must be a floating-point [N, 2] tensor with N = ", N, ", got ",
              locations.scalar_type(), " ", locations.sizes());
  TORCH_CHECK(soi.dim() == 1 && soi.size(0) == N && soi.is_floating_point(), op,
              ": soi must be a floating-point [N] tensor with N = ", N, ", got ",
              soi.scalar_type(), " ", soi.sizes());
  for (const auto* other : {&params, &im_inds, &locations, &soi}) {
    TORCH_CHECK(other->device() == mask_feats.device(), op, ": all tensors must be on ",
                mask_feats.device(), ", got one on ", other->device());
  }
  return layout;
}

}  // namespace idip
