// dynamic_mask_head helpers shared by the CPU and CUDA kernels: the layout of the per-instance
// parameters and the argument checks.
#pragma once

#include <ATen/ATen.h>

#include "macros.h"

namespace idip {

// The params layout of CondInst (AdelaiDet's parse_dynamic_params): all layer weights first,
// then all biases. Layer l maps in_l -> out_l with in_0 = C_in (+2 with relative coordinates),
// in_l = channels otherwise, out_l = 1 for the last layer and channels otherwise; its weight
// block is [out_l, in_l] row-major. Built by mask_head_layout(); index_t is int64_t on the host
// (MaskHeadLayout), the CUDA kernels take an int copy (as<int>()).
template <typename index_t>
struct MaskHeadLayoutOf {
  index_t in0;            // in_0
  index_t channels;       // hidden width
  index_t num_layers;
  index_t weights_total;  // sum of in_l * out_l: the offset of the first bias
  index_t num_params;     // P: weights_total + sum of out_l

  IDIP_HOST_DEVICE index_t in(index_t l) const { return l == 0 ? in0 : channels; }
  IDIP_HOST_DEVICE index_t out(index_t l) const { return l == num_layers - 1 ? 1 : channels; }
  // Offsets of layer l's weight block and biases in one instance's params (every layer before
  // the last has out_l = channels).
  IDIP_HOST_DEVICE index_t weight_offset(index_t l) const {
    return l == 0 ? 0 : in0 * out(0) + (l - 1) * channels * channels;
  }
  IDIP_HOST_DEVICE index_t bias_offset(index_t l) const { return weights_total + l * channels; }

  template <typename other_t>
  MaskHeadLayoutOf<other_t> as() const {
    return {static_cast<other_t>(in0), static_cast<other_t>(channels),
            static_cast<other_t>(num_layers), static_cast<other_t>(weights_total),
            static_cast<other_t>(num_params)};
  }
};

using MaskHeadLayout = MaskHeadLayoutOf<int64_t>;

inline MaskHeadLayout mask_head_layout(int64_t feat_channels, int64_t channels,
                                       int64_t num_layers, bool rel_coords) {
  MaskHeadLayout layout{feat_channels + (rel_coords ? 2 : 0), channels, num_layers, 0, 0};
  for (int64_t l = 0; l < num_layers; ++l) layout.weights_total += layout.in(l) * layout.out(l);
  layout.num_params = layout.weights_total;
  for (int64_t l = 0; l < num_layers; ++l) layout.num_params += layout.out(l);
  return layout;
}

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
  const MaskHeadLayout layout =
      mask_head_layout(mask_feats.size(1), channels, num_layers, rel_coords);
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
