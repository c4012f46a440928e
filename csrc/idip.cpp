// The idip operator library: every op's schema, in one place, and the Python module `idip._C`.
//
// Kernels are registered per device in csrc/cpu/*.cpp (TORCH_LIBRARY_IMPL(idip, CPU, m)) and
// csrc/cuda/*.cu (TORCH_LIBRARY_IMPL(idip, CUDA, m)). Fake (meta) kernels and autograd formulas
// are registered from Python in idip/ops/.
#include <Python.h>
#include <torch/library.h>

#ifndef IDIP_TORCH_VERSION
#define IDIP_TORCH_VERSION "unknown"
#endif

TORCH_LIBRARY(idip, m) {
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

namespace {

PyObject* build_info(PyObject*, PyObject*) {
#ifdef WITH_CUDA
  const int with_cuda = 1;
#else
  const int with_cuda = 0;
#endif
  return Py_BuildValue("{s:s,s:O}", "torch_version", IDIP_TORCH_VERSION, "with_cuda",
                       with_cuda ? Py_True : Py_False);
}

PyMethodDef methods[] = {
    {"build_info", build_info, METH_NOARGS,
     "Returns {'torch_version': str, 'with_cuda': bool} as of the build of idip._C."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C",
                          "idip's C++/CUDA operators, registered under torch.ops.idip.", -1,
                          methods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module_def); }
