// The few CUDA runtime and ATen-CUDA names csrc/cuda/*.cu use beyond the CUDA language, spelled
// once for nvcc and once for the CPU emulation of csrc/emulation/runtime.h. Every .cu file is
// one source for both: nvcc compiles it for the GPU (these macros expand to exactly the code the
// kernels had before: <<<...>>> launches, c10::cuda guards and streams, the launch check), and
// with IDIP_CUDA_EMULATION defined the host compiler builds it into idip._C_cuda_emu, where the
// same kernels run on the CPU for tests and register under torch.ops.idip_cuda_emu.
//
//   IDIP_CUDA_KERNELS(m)                        TORCH_LIBRARY_IMPL(idip, CUDA, m)
//   IDIP_LAUNCH_KERNEL(k, grid, block, smem, stream, args...)
//                                               k<<<grid, block, smem, stream>>>(args...); a
//                                               template kernel with several arguments goes in
//                                               parentheses: IDIP_LAUNCH_KERNEL((k<A, B>), ...)
//   IDIP_KERNEL_LAUNCH_CHECK()                  C10_CUDA_KERNEL_LAUNCH_CHECK()
//   IDIP_KERNEL_ASSERT(cond)                    CUDA_KERNEL_ASSERT(cond)
//   IDIP_DYNAMIC_SHARED(type, name);            extern __shared__ type name[];
//   gpu::DeviceGuard, gpu::current_stream()     c10::cuda::CUDAGuard, getCurrentCUDAStream()
//   gpu::max_optin_shared_bytes(),              the device's opt-in shared memory per block and
//   gpu::set_max_dynamic_shared(k, bytes)       cudaFuncSetAttribute(MaxDynamicSharedMemorySize)
//
// Warp intrinsics (__shfl_down_sync, __ballot_sync, ...) keep their CUDA names: the emulator
// implements them with 32-lane warps, as on NVIDIA GPUs.
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstddef>

#if defined(IDIP_CUDA_EMULATION)

#include "emulation/runtime.h"

namespace idip {
namespace gpu {

struct Stream {};
inline Stream current_stream() { return {}; }

class DeviceGuard {
 public:
  explicit DeviceGuard(const c10::Device&) {}
};

inline size_t max_optin_shared_bytes() { return emu::kMaxOptInSharedBytes; }

template <typename Kernel>
void set_max_dynamic_shared(Kernel kernel, size_t bytes) {
  emu::set_max_dynamic_shared(reinterpret_cast<const void*>(kernel), bytes);
}

}  // namespace gpu
}  // namespace idip

#define IDIP_CUDA_KERNELS(m) TORCH_LIBRARY_IMPL(idip_cuda_emu, CPU, m)
#define IDIP_LAUNCH_KERNEL(kernel, grid, block, shared_bytes, stream, ...) \
  ((void)(stream), ::idip::emu::launch(#kernel, kernel, grid, block, shared_bytes, __VA_ARGS__))
#define IDIP_KERNEL_LAUNCH_CHECK() ((void)0)
#define IDIP_KERNEL_ASSERT(cond)                                              \
  do {                                                                        \
    if (!(cond)) ::idip::emu::detail::trap(#cond, __FILE__, __LINE__);        \
  } while (0)
#define IDIP_DYNAMIC_SHARED(type, name) type* name = ::idip::emu::dynamic_shared<type>()

#else  // nvcc

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

namespace idip {
namespace gpu {

using Stream = c10::cuda::CUDAStream;
inline Stream current_stream() { return c10::cuda::getCurrentCUDAStream(); }
using DeviceGuard = c10::cuda::CUDAGuard;

inline size_t max_optin_shared_bytes() {
  int device = 0, bytes = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return static_cast<size_t>(bytes);
}

template <typename Kernel>
void set_max_dynamic_shared(Kernel kernel, size_t bytes) {
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(bytes)));
}

}  // namespace gpu
}  // namespace idip

#define IDIP_CUDA_KERNELS(m) TORCH_LIBRARY_IMPL(idip, CUDA, m)
#define IDIP_LAUNCH_KERNEL(kernel, grid, block, shared_bytes, stream, ...) \
  kernel<<<grid, block, shared_bytes, stream>>>(__VA_ARGS__)
#define IDIP_KERNEL_LAUNCH_CHECK() C10_CUDA_KERNEL_LAUNCH_CHECK()
#define IDIP_KERNEL_ASSERT(cond) CUDA_KERNEL_ASSERT(cond)
#define IDIP_DYNAMIC_SHARED(type, name) extern __shared__ type name[]

#endif
