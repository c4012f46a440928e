// Small kernels that check the emulator's CUDA semantics (tests/ops/test_cuda_emulation.py
// compares their results with values computed independently in Python). Written in the
// CUDA dialect of csrc/cuda and launched through compat.h, like the real kernels.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>

#include "cuda/compat.h"

namespace idip {
namespace {

constexpr int kThreads = 256;

// out[block] = sum of in[block*256 : (block+1)*256] by a shared-memory tree with __syncthreads.
__global__ void block_sum_kernel(const float* in, float* out, int64_t n) {
  __shared__ float partial[kThreads];
  const int t = threadIdx.x;
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + t;
  partial[t] = i < n ? in[i] : 0.f;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride >>= 1) {
    if (t < stride) partial[t] += partial[t + stride];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = partial[0];
}

// out[warp] = sum over the warp's 32 lanes with __shfl_down_sync, in 2-d blocks whose warps
// cross rows (40 x 4 threads: five full warps; 40 x 3: the fourth warp has 24 lanes, and a
// shuffle from a lane that does not exist is undefined).
__global__ void warp_sum_kernel(const float* in, float* out, int64_t n) {
  const int t = threadIdx.x + threadIdx.y * blockDim.x;
  const int64_t i = blockIdx.x * (int64_t)(blockDim.x * blockDim.y) + t;
  float v = i < n ? in[i] : 0.f;
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  const int warps_per_block = (blockDim.x * blockDim.y + 31) / 32;
  if ((t & 31) == 0) out[blockIdx.x * warps_per_block + t / 32] = v;
}

// out[warp] = the ballot of (in[i] > 0) as an int64.
__global__ void ballot_kernel(const float* in, int64_t* out, int64_t n) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  const unsigned bits = __ballot_sync(0xffffffffu, i < n && in[i] > 0.f);
  if ((threadIdx.x & 31) == 0) out[i / 32] = static_cast<int64_t>(bits);
}

// Every thread of every block adds in[i] to out[0] and 1 to count[0].
__global__ void atomic_sum_kernel(const double* in, double* out, int64_t* count, int64_t n) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i >= n) return;
  atomicAdd(out, in[i]);
  atomicAdd(count, int64_t(1));
}

// Reads dynamic shared memory before anything wrote it (the emulator fills it with 0xff).
__global__ void shared_poison_kernel(float* out) {
  IDIP_DYNAMIC_SHARED(unsigned char, smem_raw);
  const float* s = reinterpret_cast<const float*>(smem_raw);
  out[threadIdx.x] = s[threadIdx.x];
}

// Lanes 0-15 wait at __syncthreads for lanes 16-31, which wait in a shuffle for lanes 0-15.
__global__ void deadlock_kernel(float* out) {
  float v = threadIdx.x;
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    v = __shfl_down_sync(0xffffffffu, v, 1);
  }
  out[threadIdx.x] = v;
}

// Both halves of the block reach "a" __syncthreads, but not the same one (undefined in CUDA).
__global__ void divergent_barrier_kernel(float* out) {
  if (threadIdx.x < 32) {
    __syncthreads();
    out[threadIdx.x] = 1.f;
  } else {
    __syncthreads();
    out[threadIdx.x] = 2.f;
  }
}

__global__ void assert_kernel(const float* in, int64_t n) {
  const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (i < n) IDIP_KERNEL_ASSERT(in[i] >= 0.f);
}

// Uses `bytes` of dynamic shared memory; thread 0 writes and reads its last word. (One
// instantiation per test: an opt-in is a property of the kernel.)
template <int Variant>
__global__ void big_shared_kernel(int64_t bytes, float* out) {
  IDIP_DYNAMIC_SHARED(unsigned char, smem_raw);
  if (threadIdx.x == 0) {
    float* last = reinterpret_cast<float*>(smem_raw + bytes - sizeof(float));
    *last = 7.f;
    out[0] = *last;
  }
}

int64_t blocks_for(int64_t n, int64_t per_block) {
  return std::max<int64_t>(1, (n + per_block - 1) / per_block);
}

at::Tensor runtime_selftest(c10::string_view name_view, const at::Tensor& input) {
  const std::string name(name_view);
  const auto stream = gpu::current_stream();
  auto in = input.contiguous();
  const int64_t n = in.numel();
  if (name == "block_sum") {
    auto out = at::zeros({blocks_for(n, kThreads)}, in.options());
    IDIP_LAUNCH_KERNEL(block_sum_kernel, out.numel(), kThreads, 0, stream, in.data_ptr<float>(),
                       out.data_ptr<float>(), n);
    return out;
  }
  if (name == "warp_sum" || name == "warp_sum_partial") {
    const bool partial = name == "warp_sum_partial";
    const dim3 block(40, partial ? 3 : 4);
    const int64_t per_block = partial ? 120 : 160, warps = partial ? 4 : 5;
    auto out = at::zeros({blocks_for(n, per_block) * warps}, in.options());
    IDIP_LAUNCH_KERNEL(warp_sum_kernel, blocks_for(n, per_block), block, 0, stream,
                       in.data_ptr<float>(), out.data_ptr<float>(), n);
    return out;
  }
  if (name == "ballot") {
    auto out = at::zeros({blocks_for(n, kThreads) * kThreads / 32}, in.options().dtype(at::kLong));
    IDIP_LAUNCH_KERNEL(ballot_kernel, blocks_for(n, kThreads), kThreads, 0, stream,
                       in.data_ptr<float>(), out.data_ptr<int64_t>(), n);
    return out;
  }
  if (name == "atomic_sum") {
    auto x = in.to(at::kDouble);
    auto sum = at::zeros({1}, x.options());
    auto count = at::zeros({1}, x.options().dtype(at::kLong));
    IDIP_LAUNCH_KERNEL(atomic_sum_kernel, blocks_for(n, 64), 64, 0, stream, x.data_ptr<double>(),
                       sum.data_ptr<double>(), count.data_ptr<int64_t>(), n);
    return at::cat({sum, count.to(at::kDouble)});
  }
  if (name == "shared_poison") {
    auto out = at::zeros({32}, in.options());
    IDIP_LAUNCH_KERNEL(shared_poison_kernel, 1, 32, 32 * sizeof(float), stream,
                       out.data_ptr<float>());
    return out;
  }
  if (name == "deadlock") {
    auto out = at::zeros({32}, in.options());
    IDIP_LAUNCH_KERNEL(deadlock_kernel, 1, 32, 0, stream, out.data_ptr<float>());
    return out;
  }
  if (name == "divergent_barrier") {
    auto out = at::zeros({64}, in.options());
    IDIP_LAUNCH_KERNEL(divergent_barrier_kernel, 1, 64, 0, stream, out.data_ptr<float>());
    return out;
  }
  if (name == "assert") {
    IDIP_LAUNCH_KERNEL(assert_kernel, blocks_for(n, kThreads), kThreads, 0, stream,
                       in.data_ptr<float>(), n);
    return in;
  }
  if (name == "shared_default_limit" || name == "shared_opt_in") {
    const int64_t bytes = 64 * 1024;
    auto out = at::zeros({1}, in.options());
    if (name == "shared_opt_in") {
      gpu::set_max_dynamic_shared(big_shared_kernel<1>, bytes);
      IDIP_LAUNCH_KERNEL(big_shared_kernel<1>, 1, 32, bytes, stream, bytes, out.data_ptr<float>());
    } else {
      IDIP_LAUNCH_KERNEL(big_shared_kernel<0>, 1, 32, bytes, stream, bytes, out.data_ptr<float>());
    }
    return out;
  }
  TORCH_CHECK(false, "_runtime_selftest: unknown test '", name, "'");
}

}  // namespace

TORCH_LIBRARY_IMPL(idip_cuda_emu, CPU, m) { m.impl("_runtime_selftest", &runtime_selftest); }

}  // namespace idip
