// idip._C_cuda_emu: the kernels of csrc/cuda, compiled for the CPU emulation (runtime.h), under
// torch.ops.idip_cuda_emu with the schemas of torch.ops.idip (CPU tensors in and out).
// Built only when IDIP_CUDA_EMULATION=1 (setup.py); used by the tests, never by the models.
#include <Python.h>
#include <torch/library.h>

#include "op_schemas.h"

#ifndef IDIP_TORCH_VERSION
#define IDIP_TORCH_VERSION "unknown"
#endif

TORCH_LIBRARY(idip_cuda_emu, m) {
  idip::define_op_schemas(m);
  // Checks of the runtime itself (selftest.cpp); not ops of idip::.
  m.def("_runtime_selftest(str name, Tensor input) -> Tensor");
}

namespace {

PyObject* build_info(PyObject*, PyObject*) {
  return Py_BuildValue("{s:s,s:i}", "torch_version", IDIP_TORCH_VERSION, "warp_size", 32);
}

PyMethodDef methods[] = {
    {"build_info", build_info, METH_NOARGS,
     "Returns {'torch_version': str, 'warp_size': int} as of the build of idip._C_cuda_emu."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C_cuda_emu",
                          "idip's CUDA kernels run on the CPU (emulated), under "
                          "torch.ops.idip_cuda_emu.",
                          -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C_cuda_emu(void) { return PyModule_Create(&module_def); }
