// Large CPU outputs: ask Linux for transparent huge pages before the first write.
//
// A tensor of tens of MB comes straight from mmap and is freed back to the kernel, so every call
// pays one page fault per 4 KiB on first touch, which can cost more than the arithmetic of a
// memory-bound kernel (figures: benchmarks/README.md, "Measurements behind csrc design choices").
// Where THP is in "madvise" mode, an madvise(MADV_HUGEPAGE) on the untouched buffer turns that
// into one fault per 2 MiB. Advice only: without THP, or elsewhere than Linux, nothing changes.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace idip {

inline void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const uintptr_t bytes = static_cast<uintptr_t>(t.numel()) * t.element_size();
  if (bytes < 4 * kHuge) return;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t last = (begin + bytes) & ~(kHuge - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#else
  (void)t;
#endif
}

}  // namespace idip
