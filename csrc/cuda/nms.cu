// NMS on CUDA, entirely on the device.
//
// 1. Boxes are sorted by decreasing score (stable: equal scores in index order, as on the CPU).
// 2. nms_mask_kernel: for every box i and every block of 64 later boxes, a 64-bit word whose bit
//    j says "box j is suppressed by box i" (IoU > threshold, same class for batched_nms).
// 3. nms_scan_kernel: one thread block walks the mask 64 boxes at a time: one thread resolves the
//    64 boxes of the block in order against the "removed" bits, then all threads OR the rows of
//    the boxes it kept into the removed bits of the later blocks. It writes the kept indices and
//    their count on the device.
// The only host synchronisation is reading that count to size the output; the N x N mask never
// leaves the device.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <cstdlib>

#include "compat.h"

#include "nms.h"

namespace idip {
namespace {

constexpr int kBoxesPerWord = 64;
constexpr int kScanThreads = 512;
// Dynamic shared memory for the removed bits; with the kernel's static arrays it stays under the
// 48 KiB a block gets without opting in. Past it (more than 360448 boxes) the bits live in global
// memory. IDIP_NMS_MAX_SHARED_BYTES lowers the threshold so that tests reach that path with few
// boxes (0: always global memory).
constexpr int64_t kMaxSharedBytes = 44 * 1024;

int64_t max_shared_bytes() {
  const char* env = std::getenv("IDIP_NMS_MAX_SHARED_BYTES");
  if (env == nullptr || *env == '\0') return kMaxSharedBytes;
  char* end = nullptr;
  const long long value = std::strtoll(env, &end, 10);
  TORCH_CHECK(end != env && *end == '\0' && value >= 0, "IDIP_NMS_MAX_SHARED_BYTES must be a "
              "non-negative integer, got '", env, "'");
  return std::min<int64_t>(value, kMaxSharedBytes);
}

// Number of boxes in 64-box word `word` of n boxes.
__device__ __forceinline__ int boxes_in_word(int64_t n, int64_t word) {
  const int64_t left = n - word * kBoxesPerWord;
  return static_cast<int>(left < kBoxesPerWord ? left : kBoxesPerWord);
}

template <typename T>
__global__ void nms_mask_kernel(int64_t n, const T* __restrict__ boxes,
                                const int64_t* __restrict__ classes, double iou_threshold,
                                int64_t words_per_row, unsigned long long* __restrict__ mask) {
  using acc_t = at::opmath_type<T>;
  const int64_t row_block = blockIdx.y, col_block = blockIdx.x;
  if (row_block > col_block) return;  // only later boxes can be suppressed
  const int row_size = boxes_in_word(n, row_block);
  const int col_size = boxes_in_word(n, col_block);
  __shared__ acc_t col_boxes[kBoxesPerWord][4];
  __shared__ acc_t col_areas[kBoxesPerWord];
  __shared__ int64_t col_classes[kBoxesPerWord];
  const int t = threadIdx.x;
  if (t < col_size) {
    const T* b = boxes + (col_block * kBoxesPerWord + t) * 4;
    for (int q = 0; q < 4; ++q) col_boxes[t][q] = static_cast<acc_t>(b[q]);
    col_areas[t] = box_area(col_boxes[t][0], col_boxes[t][1], col_boxes[t][2], col_boxes[t][3]);
    col_classes[t] = classes ? classes[col_block * kBoxesPerWord + t] : 0;
  }
  __syncthreads();
  if (t >= row_size) return;
  const int64_t i = row_block * kBoxesPerWord + t;
  acc_t box[4];
  for (int q = 0; q < 4; ++q) box[q] = static_cast<acc_t>(boxes[i * 4 + q]);
  const acc_t area = box_area(box[0], box[1], box[2], box[3]);
  const int64_t cls = classes ? classes[i] : 0;
  unsigned long long bits = 0;
  for (int j = row_block == col_block ? t + 1 : 0; j < col_size; ++j) {
    if (col_classes[j] != cls) continue;
    if (static_cast<double>(box_iou(box, area, col_boxes[j], col_areas[j])) > iou_threshold) {
      bits |= 1ULL << j;
    }
  }
  mask[i * words_per_row + col_block] = bits;
}

// `removed_global` is null when the removed bits fit in shared memory.
__global__ void nms_scan_kernel(int64_t n, int64_t words_per_row,
                                const unsigned long long* __restrict__ mask,
                                const int64_t* __restrict__ order, int64_t* __restrict__ keep,
                                int64_t* __restrict__ num_kept,
                                unsigned long long* removed_global) {
  IDIP_DYNAMIC_SHARED(unsigned long long, removed_shared);
  __shared__ unsigned long long diagonal[kBoxesPerWord];
  __shared__ unsigned long long kept_bits;
  __shared__ int64_t count;
  unsigned long long* removed = removed_global ? removed_global : removed_shared;
  const int t = threadIdx.x;
  for (int64_t w = t; w < words_per_row; w += blockDim.x) removed[w] = 0;
  if (t == 0) count = 0;
  __syncthreads();
  for (int64_t block = 0; block < words_per_row; ++block) {
    const int64_t first = block * kBoxesPerWord;
    const int size = boxes_in_word(n, block);
    if (t < size) diagonal[t] = mask[(first + t) * words_per_row + block];
    __syncthreads();
    if (t == 0) {
      unsigned long long gone = removed[block], kept = 0;
      int64_t c = count;
      for (int j = 0; j < size; ++j) {
        if ((gone >> j) & 1ULL) continue;
        kept |= 1ULL << j;
        keep[c++] = order[first + j];
        gone |= diagonal[j];
      }
      count = c;
      kept_bits = kept;
    }
    __syncthreads();
    const unsigned long long kept = kept_bits;
    for (int64_t w = block + 1 + t; w < words_per_row; w += blockDim.x) {
      unsigned long long acc = removed[w];
      for (unsigned long long bits = kept; bits; bits &= bits - 1) {
        const int j = __ffsll(static_cast<long long>(bits)) - 1;
        acc |= mask[(first + j) * words_per_row + w];
      }
      removed[w] = acc;
    }
    __syncthreads();
  }
  if (t == 0) *num_kept = count;
}

at::Tensor nms_impl(const char* op, const at::Tensor& boxes, const at::Tensor& scores,
                    const at::Tensor* idxs, double iou_threshold) {
  check_nms_args(op, boxes, scores, idxs);
  gpu::DeviceGuard guard(boxes.device());
  const int64_t n = boxes.size(0);
  auto long_options = boxes.options().dtype(at::kLong);
  if (n == 0) return at::empty({0}, long_options);
  const at::Tensor order = std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  const at::Tensor sorted_boxes = boxes.index_select(0, order).contiguous();
  at::Tensor sorted_classes;
  if (idxs != nullptr) sorted_classes = idxs->to(at::kLong).index_select(0, order).contiguous();
  const int64_t words = (n + kBoxesPerWord - 1) / kBoxesPerWord;
  TORCH_CHECK(words <= 65535, op, ": at most ", 65535 * kBoxesPerWord, " boxes are supported, got ", n);
  auto mask = at::empty({n * words}, long_options);
  auto keep = at::empty({n}, long_options);
  auto num_kept = at::empty({1}, long_options);
  const bool shared = words * 8 <= max_shared_bytes();
  at::Tensor removed = shared ? at::Tensor() : at::empty({words}, long_options);
  const auto stream = gpu::current_stream();
  auto* mask_ptr = reinterpret_cast<unsigned long long*>(mask.data_ptr<int64_t>());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "nms_cuda", [&] {
    const dim3 grid(static_cast<unsigned>(words), static_cast<unsigned>(words));
    IDIP_LAUNCH_KERNEL(nms_mask_kernel<scalar_t>, grid, kBoxesPerWord, 0, stream,
        n, sorted_boxes.data_ptr<scalar_t>(),
        idxs != nullptr ? sorted_classes.data_ptr<int64_t>() : nullptr, iou_threshold, words,
        mask_ptr);
    IDIP_KERNEL_LAUNCH_CHECK();
  });
  IDIP_LAUNCH_KERNEL(nms_scan_kernel, 1, kScanThreads, shared ? words * 8 : 0, stream,
      n, words, mask_ptr, order.data_ptr<int64_t>(), keep.data_ptr<int64_t>(),
      num_kept.data_ptr<int64_t>(),
      shared ? nullptr : reinterpret_cast<unsigned long long*>(removed.data_ptr<int64_t>()));
  IDIP_KERNEL_LAUNCH_CHECK();
  const int64_t kept = num_kept.item<int64_t>();  // the one synchronisation: the output's size
  return keep.narrow(0, 0, kept);
}

at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  return nms_impl("nms", boxes, scores, nullptr, iou_threshold);
}

at::Tensor batched_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores,
                            const at::Tensor& idxs, double iou_threshold) {
  return nms_impl("batched_nms", boxes, scores, &idxs, iou_threshold);
}

}  // namespace

IDIP_CUDA_KERNELS(m) {
  m.impl("nms", &nms_cuda);
  m.impl("batched_nms", &batched_nms_cuda);
}

}  // namespace idip
