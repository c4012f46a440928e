// A CPU runtime for CUDA-dialect kernels: the same __global__ functions that nvcc compiles for
// the GPU, compiled by the host C++ compiler and run on CPU threads, so that tests without a GPU
// execute the device code of csrc/cuda (see csrc/cuda/compat.h for how a .cu file selects it).
//
// Model: blocks of a grid run in parallel on the ATen thread pool; inside a block every CUDA
// thread is a fiber with its own stack, scheduled cooperatively on one OS thread, so
// __syncthreads and the warp intrinsics are real barriers. Warps are 32 lanes as on NVIDIA GPUs.
// __shared__ is `thread_local` (the fibers of one block share their OS thread). Launch limits are
// those of an sm_90 GPU (1024 threads per block, grid.y/z <= 65535, 48 KiB of dynamic shared
// memory unless the kernel opted in, at most 227 KiB).
//
// What it adds for testing: a kernel assert reports which block and thread failed and the launch
// raises an error (instead of killing a CUDA context); a barrier that not all live threads reach
// (a deadlock on a GPU) is reported the same way; dynamic shared memory starts filled with 0xff
// bytes (NaN as floats) so that reading it before writing shows. It checks logic, never speed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

struct uint3 {
  unsigned x, y, z;
};

namespace idip {
namespace emu {

constexpr int kWarpSize = 32;
constexpr int kMaxThreadsPerBlock = 1024;
constexpr size_t kDefaultDynamicSharedBytes = 48 * 1024;
constexpr size_t kMaxOptInSharedBytes = 227 * 1024;  // sm_90's per-block opt-in limit

namespace detail {

// What a running CUDA thread can see of itself; the scheduler's Fiber extends it.
struct ThreadView {
  uint3 thread_idx;
  int lane;
  int warp;
};

struct BlockView {
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
  unsigned char* dynamic_shared;
};

extern thread_local ThreadView* current_thread;
extern thread_local BlockView current_block;

// Runs a grid: `invoke(call)` is one CUDA thread's execution of the kernel.
void run_grid(const char* name, const void* kernel, dim3 grid, dim3 block, size_t shared_bytes,
              void (*invoke)(void*), void* call);

// The calling thread's block-wide barrier, at source line `line` of `file` (which __syncthreads it
// is: the compiler may duplicate the code of one, so return addresses would not tell).
void sync_block(const char* file, int line);

// Warp exchange: publishes `value` for the caller's lane, waits for every live lane of its warp,
// and returns the published values of this round (`valid[l]` false for lanes that did not take
// part: exited, or beyond the block's last thread).
const uint64_t* warp_exchange(uint64_t value, const bool** valid);

[[noreturn]] void trap(const char* condition, const char* file, int line);

}  // namespace detail

// The opt-in of cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes).
void set_max_dynamic_shared(const void* kernel, size_t bytes);

template <typename... Params, typename... Args>
void launch(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block,
            size_t shared_bytes, Args&&... args) {
  using Tuple = std::tuple<std::decay_t<Params>...>;
  Tuple params(static_cast<std::decay_t<Params>>(std::forward<Args>(args))...);
  struct Call {
    void (*kernel)(Params...);
    Tuple* params;
    static void invoke(void* self) {
      auto* c = static_cast<Call*>(self);
      std::apply(c->kernel, *c->params);  // each thread gets its own copy of the arguments
    }
  } call{kernel, &params};
  detail::run_grid(name, reinterpret_cast<const void*>(kernel), grid, block, shared_bytes,
                   &Call::invoke, &call);
}

template <typename T>
inline T* dynamic_shared() {
  return reinterpret_cast<T*>(detail::current_block.dynamic_shared);
}

}  // namespace emu
}  // namespace idip

// ---- The CUDA names device code uses ----------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ thread_local

#define threadIdx (::idip::emu::detail::current_thread->thread_idx)
#define blockIdx (::idip::emu::detail::current_block.block_idx)
#define blockDim (::idip::emu::detail::current_block.block_dim)
#define gridDim (::idip::emu::detail::current_block.grid_dim)

constexpr int warpSize = ::idip::emu::kWarpSize;

// A macro, not a function, so that the runtime sees which __syncthreads a thread waits at.
#define __syncthreads() ::idip::emu::detail::sync_block(__FILE__, __LINE__)

namespace idip {
namespace emu {
namespace detail {

template <typename T>
inline uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable<T>::value,
                "warp shuffles move values of at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  return bits;
}

template <typename T>
inline T from_bits(uint64_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

// CUDA's rule: a source lane outside the caller's `width`-lane segment returns the caller's own
// value; a source lane that did not take part returns an undefined value (here: all bits set).
template <typename T>
inline T shuffle_from(T var, int src, int width) {
  const bool* valid = nullptr;
  const uint64_t* values = warp_exchange(to_bits(var), &valid);
  const int lane = current_thread->lane;
  const int segment = lane & ~(width - 1);
  if (src < segment || src >= segment + width) return var;
  return valid[src] ? from_bits<T>(values[src]) : from_bits<T>(~uint64_t(0));
}

}  // namespace detail
}  // namespace emu
}  // namespace idip

template <typename T>
inline T __shfl_sync(unsigned, T var, int src_lane, int width = warpSize) {
  const int lane = ::idip::emu::detail::current_thread->lane;
  const int segment = lane & ~(width - 1);
  return ::idip::emu::detail::shuffle_from(var, segment + (src_lane % width), width);
}

template <typename T>
inline T __shfl_down_sync(unsigned, T var, unsigned delta, int width = warpSize) {
  const int lane = ::idip::emu::detail::current_thread->lane;
  return ::idip::emu::detail::shuffle_from(var, lane + static_cast<int>(delta), width);
}

template <typename T>
inline T __shfl_up_sync(unsigned, T var, unsigned delta, int width = warpSize) {
  const int lane = ::idip::emu::detail::current_thread->lane;
  return ::idip::emu::detail::shuffle_from(var, lane - static_cast<int>(delta), width);
}

template <typename T>
inline T __shfl_xor_sync(unsigned, T var, int lane_mask, int width = warpSize) {
  const int lane = ::idip::emu::detail::current_thread->lane;
  return ::idip::emu::detail::shuffle_from(var, lane ^ lane_mask, width);
}

inline unsigned __ballot_sync(unsigned, int predicate) {
  const bool* valid = nullptr;
  const uint64_t* values = ::idip::emu::detail::warp_exchange(predicate != 0, &valid);
  unsigned bits = 0;
  for (int l = 0; l < ::idip::emu::kWarpSize; ++l) {
    if (valid[l] && values[l]) bits |= 1u << l;
  }
  return bits;
}

inline int __any_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) != 0; }

inline int __all_sync(unsigned, int predicate) {
  const bool* valid = nullptr;
  const uint64_t* values = ::idip::emu::detail::warp_exchange(predicate != 0, &valid);
  for (int l = 0; l < ::idip::emu::kWarpSize; ++l) {
    if (valid[l] && !values[l]) return 0;
  }
  return 1;
}

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }

// Atomics are real atomics: blocks run on several OS threads at once.
template <typename T>
inline T atomicAdd(T* address, T value) {
  static_assert(std::is_arithmetic<T>::value, "atomicAdd of an arithmetic type");
  if constexpr (std::is_integral<T>::value) {
    return __atomic_fetch_add(address, value, __ATOMIC_RELAXED);
  } else {
    using Bits = std::conditional_t<sizeof(T) == 8, uint64_t, uint32_t>;
    static_assert(sizeof(T) == sizeof(Bits), "atomicAdd of float or double");
    Bits* raw = reinterpret_cast<Bits*>(address);
    Bits expected = __atomic_load_n(raw, __ATOMIC_RELAXED);
    for (;;) {
      T old;
      std::memcpy(&old, &expected, sizeof(T));
      const T sum = old + value;
      Bits desired;
      std::memcpy(&desired, &sum, sizeof(T));
      if (__atomic_compare_exchange_n(raw, &expected, desired, /*weak=*/true, __ATOMIC_RELAXED,
                                      __ATOMIC_RELAXED)) {
        return old;
      }
    }
  }
}

template <typename T>
inline T atomicOr(T* address, T value) {
  return __atomic_fetch_or(address, value, __ATOMIC_RELAXED);
}

template <typename T>
inline T atomicMax(T* address, T value) {
  T old = __atomic_load_n(address, __ATOMIC_RELAXED);
  while (old < value &&
         !__atomic_compare_exchange_n(address, &old, value, true, __ATOMIC_RELAXED,
                                      __ATOMIC_RELAXED)) {
  }
  return old;
}

template <typename T>
inline T atomicMin(T* address, T value) {
  T old = __atomic_load_n(address, __ATOMIC_RELAXED);
  while (old > value &&
         !__atomic_compare_exchange_n(address, &old, value, true, __ATOMIC_RELAXED,
                                      __ATOMIC_RELAXED)) {
  }
  return old;
}
