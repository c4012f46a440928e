// NMS on the CPU: boxes in decreasing score order (a stable sort, as torchvision's CPU kernel:
// equal scores in index order), then the greedy scan. batched_nms compares only boxes of the same class.
#include <torch/library.h>

#include <vector>

#include "nms.h"

namespace idip {
namespace {

template <typename T>
int64_t greedy_scan(const T* boxes, const int64_t* classes, const int64_t* order, int64_t n,
                    double iou_threshold, int64_t* keep) {
  std::vector<T> areas(n);
  for (int64_t i = 0; i < n; ++i) {
    const T* b = boxes + i * 4;
    areas[i] = box_area(b[0], b[1], b[2], b[3]);
  }
  std::vector<uint8_t> suppressed(n, 0);
  int64_t kept = 0;
  for (int64_t i = 0; i < n; ++i) {  // i, j: positions in score order
    if (suppressed[i]) continue;
    keep[kept++] = order[i];
    const T* bi = boxes + i * 4;
    for (int64_t j = i + 1; j < n; ++j) {
      if (suppressed[j] || (classes != nullptr && classes[j] != classes[i])) continue;
      if (box_iou(bi, areas[i], boxes + j * 4, areas[j]) > iou_threshold) suppressed[j] = 1;
    }
  }
  return kept;
}

at::Tensor nms_impl(const char* op, const at::Tensor& boxes, const at::Tensor& scores,
                    const at::Tensor* idxs, double iou_threshold) {
  check_nms_args(op, boxes, scores, idxs);
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  const at::Tensor order = std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  const at::Tensor sorted_boxes = boxes.index_select(0, order).contiguous();
  at::Tensor sorted_classes;
  if (idxs != nullptr) sorted_classes = idxs->to(at::kLong).index_select(0, order).contiguous();
  at::Tensor keep = at::empty({n}, boxes.options().dtype(at::kLong));
  int64_t kept = 0;
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "nms_cpu", [&] {
    kept = greedy_scan(sorted_boxes.data_ptr<scalar_t>(),
                       idxs != nullptr ? sorted_classes.data_ptr<int64_t>() : nullptr,
                       order.data_ptr<int64_t>(), n, iou_threshold, keep.data_ptr<int64_t>());
  });
  return keep.narrow(0, 0, kept);
}

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  return nms_impl("nms", boxes, scores, nullptr, iou_threshold);
}

at::Tensor batched_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores,
                           const at::Tensor& idxs, double iou_threshold) {
  return nms_impl("batched_nms", boxes, scores, &idxs, iou_threshold);
}

}  // namespace

TORCH_LIBRARY_IMPL(idip, CPU, m) {
  m.impl("nms", &nms_cpu);
  m.impl("batched_nms", &batched_nms_cpu);
}

}  // namespace idip
