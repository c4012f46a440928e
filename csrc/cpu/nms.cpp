// NMS on the CPU: boxes in decreasing score order (a stable sort, as torchvision's CPU kernel:
// equal scores in index order), then the greedy scan. batched_nms scans each class on its own.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "nms.h"

namespace idip {
namespace {

// The largest value of T that is <= threshold: for any x of type T (NaN included),
// x > below_or_at(threshold) exactly when double(x) > threshold, as torchvision compares.
template <typename T>
T below_or_at(double threshold) {
  T t = static_cast<T>(threshold);
  if (static_cast<double>(t) > threshold) t = std::nextafter(t, -std::numeric_limits<T>::infinity());
  return t;
}

// Greedy scan of n boxes in score order; writes order[i] of each kept box to keep, returns how
// many. The survivors are kept compacted in separate coordinate arrays: each kept box removes
// what it suppresses, so later ones look only at what is left, in a loop without branches.
template <typename T>
int64_t greedy_scan(const T* boxes, const int64_t* order, int64_t n, double iou_threshold,
                    int64_t* keep) {
  std::vector<T> x1(n), y1(n), x2(n), y2(n), area(n);
  std::vector<int64_t> pos(n);
  for (int64_t i = 0; i < n; ++i) {
    const T* b = boxes + i * 4;
    x1[i] = b[0], y1[i] = b[1], x2[i] = b[2], y2[i] = b[3];
    area[i] = box_area(b[0], b[1], b[2], b[3]);
    pos[i] = i;
  }
  const T threshold = below_or_at<T>(iou_threshold);
  std::vector<uint8_t> suppressed(n);
  int64_t left = n;
  int64_t kept = 0;
  while (left > 0) {
    keep[kept++] = order[pos[0]];
    const T b[4] = {x1[0], y1[0], x2[0], y2[0]};
    const T a = area[0];
    for (int64_t j = 1; j < left; ++j) {
      const T c[4] = {x1[j], y1[j], x2[j], y2[j]};
      suppressed[j] = box_iou(b, a, c, area[j]) > threshold;
    }
    int64_t w = 0;
    for (int64_t j = 1; j < left; ++j) {
      x1[w] = x1[j], y1[w] = y1[j], x2[w] = x2[j], y2[w] = y2[j];
      area[w] = area[j], pos[w] = pos[j];
      w += !suppressed[j];
    }
    left = w;
  }
  return kept;
}

// Boxes of different classes never suppress each other, so one scan per class keeps the same set
// as a single scan that skips other classes' boxes, with 1/classes of the pairs to look at; the
// classes are independent, so they run in parallel. Returns a flag per score-order position.
template <typename T>
std::vector<uint8_t> scan_per_class(const at::Tensor& sorted_boxes, const at::Tensor& sorted_classes,
                                    double iou_threshold) {
  const int64_t n = sorted_boxes.size(0);
  // score-order positions grouped by class; a stable sort keeps score order within a class
  const at::Tensor by_class = std::get<1>(sorted_classes.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false));
  const at::Tensor class_boxes = sorted_boxes.index_select(0, by_class).contiguous();
  const at::Tensor grouped = sorted_classes.index_select(0, by_class).contiguous();
  const int64_t* cls = grouped.data_ptr<int64_t>();
  std::vector<int64_t> starts{0};
  for (int64_t i = 1; i < n; ++i) {
    if (cls[i] != cls[i - 1]) starts.push_back(i);
  }
  starts.push_back(n);
  const int64_t segments = static_cast<int64_t>(starts.size()) - 1;
  const T* boxes = class_boxes.data_ptr<T>();
  const int64_t* positions = by_class.data_ptr<int64_t>();
  std::vector<int64_t> kept_positions(n);
  std::vector<uint8_t> kept(n, 0);
  // small inputs stay on one thread: a parallel region costs more than their scan
  const int64_t grain = n < 2048 ? segments : 1;
  at::parallel_for(0, segments, grain, [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end; ++s) {
      const int64_t first = starts[s];
      const int64_t count = greedy_scan(boxes + first * 4, positions + first, starts[s + 1] - first,
                                        iou_threshold, kept_positions.data() + first);
      for (int64_t k = 0; k < count; ++k) kept[kept_positions[first + k]] = 1;
    }
  });
  return kept;
}

at::Tensor nms_impl(const char* op, const at::Tensor& boxes, const at::Tensor& scores,
                    const at::Tensor* idxs, double iou_threshold) {
  check_nms_args(op, boxes, scores, idxs);
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  const at::Tensor order = std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  const at::Tensor sorted_boxes = boxes.index_select(0, order).contiguous();
  at::Tensor keep = at::empty({n}, boxes.options().dtype(at::kLong));
  int64_t* out = keep.data_ptr<int64_t>();
  const int64_t* order_ptr = order.data_ptr<int64_t>();
  int64_t kept = 0;
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "nms_cpu", [&] {
    if (idxs == nullptr) {
      kept = greedy_scan(sorted_boxes.data_ptr<scalar_t>(), order_ptr, n, iou_threshold, out);
      return;
    }
    const at::Tensor sorted_classes = idxs->to(at::kLong).index_select(0, order).contiguous();
    const std::vector<uint8_t> flags = scan_per_class<scalar_t>(sorted_boxes, sorted_classes, iou_threshold);
    for (int64_t i = 0; i < n; ++i) {  // back to decreasing score order across classes
      if (flags[i]) out[kept++] = order_ptr[i];
    }
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
