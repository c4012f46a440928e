// The idip operator library (schemas in op_schemas.h) and the Python module `idip._C`.
//
// Kernels are registered per device in csrc/cpu/*.cpp (TORCH_LIBRARY_IMPL(idip, CPU, m)) and
// csrc/cuda/*.cu (TORCH_LIBRARY_IMPL(idip, CUDA, m)). Fake (meta) kernels and autograd formulas
// are registered from Python in idip/ops/.
#include <Python.h>
#include <torch/library.h>

#include "op_schemas.h"

#ifndef IDIP_TORCH_VERSION
#define IDIP_TORCH_VERSION "unknown"
#endif

TORCH_LIBRARY(idip, m) { idip::define_op_schemas(m); }

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
