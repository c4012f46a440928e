// Every op's schema, written once: idip.cpp defines them under `idip`, and the CPU emulation
// of the CUDA kernels (csrc/emulation/module.cpp) under `idip_cuda_emu`, so both namespaces have
// exactly the same signatures.
#pragma once

#include <torch/library.h>

namespace idip {

inline void define_op_schemas(torch::Library& m) {
  // ---- RoIAlign and NMS (ops 1-3) ------------------------------------------------------------
  m.def(
      "roi_align(Tensor input, Tensor rois, int pooled_height, int pooled_width, "
      "float spatial_scale, int sampling_ratio, bool aligned) -> Tensor");
  m.def(
      "roi_align_backward(Tensor grad, Tensor rois, SymInt[] input_shape, float spatial_scale, "
      "int sampling_ratio, bool aligned) -> Tensor");
  m.def(
      "multilevel_roi_align(Tensor[] features, Tensor rois, int pooled_height, int pooled_width, "
      "float[] scales, int sampling_ratio, bool aligned, float canonical_box_size, "
      "int canonical_level) -> Tensor");
  m.def(
      "multilevel_roi_align_backward(Tensor grad, Tensor rois, SymInt batch_size, "
      "SymInt channels, SymInt[] heights, SymInt[] widths, float[] scales, int sampling_ratio, "
      "bool aligned, float canonical_box_size, int canonical_level) -> Tensor[]");
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
  m.def("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor");

  // ---- CondInst: aligned upsampling and the fused dynamic mask head (ops 4-5) ----------------
  m.def("aligned_upsample(Tensor x, int factor) -> Tensor");
  m.def("aligned_upsample_backward(Tensor grad, int factor, int height, int width) -> Tensor");
  m.def(
      "dynamic_mask_head(Tensor mask_feats, Tensor params, Tensor im_inds, Tensor locations, "
      "Tensor soi, int mask_stride, int channels=8, int num_layers=3, bool rel_coords=True) "
      "-> Tensor");
  m.def(
      "dynamic_mask_head_backward(Tensor grad, Tensor mask_feats, Tensor params, Tensor im_inds, "
      "Tensor locations, Tensor soi, int mask_stride, int channels, int num_layers, "
      "bool rel_coords) -> (Tensor, Tensor)");

  // ---- Diffusion box scheduling (ops 6-7) ----------------------------------------------------
  m.def(
      "box_q_sample(Tensor x_start, Tensor noise, Tensor t, Tensor alphas_cumprod, "
      "Tensor image_size) -> (Tensor, Tensor)");
  m.def(
      "box_ddim_step(Tensor x_t, Tensor pred_boxes, Tensor image_size, float alpha, "
      "float alpha_next, float eta, Tensor keep, Tensor noise, Tensor renew) -> (Tensor, Tensor)");
}

}  // namespace idip
