// Non-maximum suppression helpers shared by the CPU and CUDA kernels (host and device).
//
// IoU is computed exactly as torchvision.ops.nms does (no +1 in widths, the same order of
// operations) so the keep set is the same, ties and IoU == threshold included: a box is
// suppressed only when its IoU with a kept, higher-scoring box is strictly above the threshold.
#pragma once

#include <ATen/ATen.h>

#include "macros.h"

namespace idip {

template <typename T>
IDIP_HOST_DEVICE T box_area(T x1, T y1, T x2, T y2) {
  return (x2 - x1) * (y2 - y1);
}

// IoU of boxes a and b (xyxy) given their areas. Degenerate pairs give NaN (never suppressed).
template <typename T>
IDIP_HOST_DEVICE T box_iou(const T* a, T area_a, const T* b, T area_b) {
  const T xx1 = a[0] > b[0] ? a[0] : b[0];
  const T yy1 = a[1] > b[1] ? a[1] : b[1];
  const T xx2 = a[2] < b[2] ? a[2] : b[2];
  const T yy2 = a[3] < b[3] ? a[3] : b[3];
  const T w = xx2 - xx1 > T(0) ? xx2 - xx1 : T(0);
  const T h = yy2 - yy1 > T(0) ? yy2 - yy1 : T(0);
  const T inter = w * h;
  return inter / (area_a + area_b - inter);
}

// Checks boxes [K, 4], scores [K] (and idxs [K] for batched_nms) and names the argument at fault.
inline void check_nms_args(const char* op, const at::Tensor& boxes, const at::Tensor& scores,
                           const at::Tensor* idxs) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, op, ": boxes must be [K, 4] (x1, y1, x2, y2), got ",
              boxes.sizes());
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == boxes.size(0), op,
              ": scores must be [K] with K = ", boxes.size(0), ", got ", scores.sizes());
  TORCH_CHECK(at::isFloatingType(boxes.scalar_type()), op, ": boxes must be floating point, got ",
              boxes.scalar_type());
  TORCH_CHECK(scores.scalar_type() == boxes.scalar_type(), op, ": scores (", scores.scalar_type(),
              ") must have the dtype of boxes (", boxes.scalar_type(), ")");
  TORCH_CHECK(scores.device() == boxes.device(), op, ": scores are on ", scores.device(),
              " but boxes on ", boxes.device());
  if (idxs != nullptr) {
    TORCH_CHECK(idxs->dim() == 1 && idxs->size(0) == boxes.size(0), op,
                ": idxs must be [K] with K = ", boxes.size(0), ", got ", idxs->sizes());
    TORCH_CHECK(at::isIntegralType(idxs->scalar_type(), /*includeBool=*/false), op,
                ": idxs must be an integer tensor, got ", idxs->scalar_type());
    TORCH_CHECK(idxs->device() == boxes.device(), op, ": idxs are on ", idxs->device(),
                " but boxes on ", boxes.device());
  }
}

}  // namespace idip
