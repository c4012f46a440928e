"""``nms`` and ``batched_nms``: greedy non-maximum suppression (torchvision's keep set)."""

from __future__ import annotations

import torch
from torch import Tensor

from . import _extension


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS: keeps a box unless a kept, higher-scoring box overlaps it with IoU > threshold.

    Same keep set as ``torchvision.ops.nms`` on the CPU (equal scores are taken in index order, a
    stable sort, on every device; a pair with IoU exactly equal to the threshold is not
    suppressed; degenerate boxes, whose IoU is NaN,
    are never suppressed). On CUDA the whole computation stays on the device; the only
    synchronisation reads the number of kept boxes.

    Args:
        boxes: [K, 4] boxes (x1, y1, x2, y2), float32/float64 (float16/bfloat16 on CUDA).
        scores: [K] scores, same dtype and device.
        iou_threshold: suppression threshold.

    Returns:
        [M] int64 indices into ``boxes`` of the kept boxes, by decreasing score.
    """
    return _extension.kernels().nms(boxes, scores, float(iou_threshold))


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Class-aware NMS: boxes suppress each other only when their ``idxs`` are equal.

    Args:
        boxes: [K, 4] boxes (x1, y1, x2, y2).
        scores: [K] scores, same dtype and device.
        idxs: [K] integer class (or image) of each box.
        iou_threshold: suppression threshold.

    Returns:
        [M] int64 indices of the kept boxes, by decreasing score.
    """
    return _extension.kernels().batched_nms(boxes, scores, idxs, float(iou_threshold))


def _fake_nms(boxes, scores):
    torch._check(
        boxes.dim() == 2 and boxes.shape[1] == 4,
        lambda: f"nms: boxes must be [K, 4], got {boxes.shape}",
    )
    torch._check(
        scores.dim() == 1 and scores.shape[0] == boxes.shape[0], lambda: "nms: scores must be [K]"
    )
    kept = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((kept,), dtype=torch.int64)


def _fake_single_class(boxes, scores, iou_threshold):
    return _fake_nms(boxes, scores)


def _fake_batched(boxes, scores, idxs, iou_threshold):
    torch._check(
        idxs.dim() == 1 and idxs.shape[0] == boxes.shape[0], lambda: "batched_nms: idxs must be [K]"
    )
    return _fake_nms(boxes, scores)


@_extension.for_each_library
def _register(namespace: str) -> None:
    torch.library.register_fake(f"{namespace}::nms")(_fake_single_class)
    torch.library.register_fake(f"{namespace}::batched_nms")(_fake_batched)
