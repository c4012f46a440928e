// Macros shared by the CPU and CUDA kernels.
#pragma once

// A helper both back ends call: host and device code under nvcc, a plain inline function in the
// host compiler's builds (the CPU kernels and the CPU emulation of csrc/cuda).
#if defined(__CUDACC__)
#define IDIP_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define IDIP_HOST_DEVICE inline
#endif
