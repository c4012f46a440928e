"""Box utilities shared by the models: format conversions, areas, IoU and generalised IoU.

Boxes are float tensors whose last dimension holds 4 coordinates; xyxy is (x1, y1, x2, y2),
cxcywh is (centre x, centre y, width, height). Functions accept any number of leading dimensions
unless stated otherwise.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Largest log-ratio a width/height delta may have before exp(): detectron2/Sparse R-CNN's clamp.
SCALE_CLAMP = math.log(1000.0 / 16)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """[..., 4] xyxy -> [..., 4] cxcywh."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """[..., 4] cxcywh -> [..., 4] xyxy."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """[..., 4] xyxy -> [...] areas (negative extents count as zero)."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(
        min=0
    )


def _check_boxes(name: str, boxes: Tensor) -> None:
    if boxes.dim() < 1 or boxes.shape[-1] != 4:
        raise ValueError(
            f"{name} must have 4 coordinates in its last dimension, got {tuple(boxes.shape)}"
        )


def pairwise_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> tuple[Tensor, Tensor]:
    """IoU of every box of ``boxes1`` with every box of ``boxes2``.

    Args:
        boxes1: [N, 4] xyxy.
        boxes2: [M, 4] xyxy.
        eps: added to the union so that empty boxes give 0 instead of NaN.

    Returns:
        iou: [N, M].
        union: [N, M] union areas (used by the generalised IoU).
    """
    _check_boxes("boxes1", boxes1)
    _check_boxes("boxes2", boxes2)
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    return inter / (union + eps), union


def pairwise_generalized_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Generalised IoU (Rezatofighi et al. 2019) of every pair: [N, 4], [M, 4] xyxy -> [N, M]."""
    iou, union = pairwise_box_iou(boxes1, boxes2, eps)
    lt = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    hull = wh[..., 0] * wh[..., 1]
    return iou - (hull - union) / (hull + eps)


def elementwise_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> tuple[Tensor, Tensor]:
    """IoU of matching rows: [..., 4], [..., 4] xyxy -> ([...] iou, [...] union)."""
    _check_boxes("boxes1", boxes1)
    _check_boxes("boxes2", boxes2)
    lt = torch.max(boxes1[..., :2], boxes2[..., :2])
    rb = torch.min(boxes1[..., 2:], boxes2[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(boxes1) + box_area(boxes2) - inter
    return inter / (union + eps), union


def elementwise_generalized_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Generalised IoU of matching rows: [..., 4], [..., 4] xyxy -> [...]."""
    iou, union = elementwise_box_iou(boxes1, boxes2, eps)
    lt = torch.min(boxes1[..., :2], boxes2[..., :2])
    rb = torch.max(boxes1[..., 2:], boxes2[..., 2:])
    wh = (rb - lt).clamp(min=0)
    hull = wh[..., 0] * wh[..., 1]
    return iou - (hull - union) / (hull + eps)


def clip_boxes(boxes: Tensor, height: int | float, width: int | float) -> Tensor:
    """Clips [..., 4] xyxy boxes to the image [0, width] x [0, height] (out of place)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(
        [x1.clamp(0, width), y1.clamp(0, height), x2.clamp(0, width), y2.clamp(0, height)], dim=-1
    )


def apply_box_deltas(
    deltas: Tensor, boxes: Tensor, weights: tuple[float, float, float, float] = (2.0, 2.0, 1.0, 1.0)
) -> Tensor:
    """Decodes R-CNN box deltas (dx, dy, dw, dh) relative to ``boxes``.

    ``cx' = cx + dx / wx * w``, ``w' = w * exp(min(dw / ww, log(1000 / 16)))`` and likewise for y/h.

    Args:
        deltas: [..., 4] predicted deltas.
        boxes: [..., 4] xyxy reference boxes.
        weights: (wx, wy, ww, wh) the deltas are divided by.

    Returns:
        [..., 4] decoded xyxy boxes.
    """
    boxes = boxes.to(deltas.dtype)
    widths = boxes[..., 2] - boxes[..., 0]
    heights = boxes[..., 3] - boxes[..., 1]
    ctr_x = boxes[..., 0] + 0.5 * widths
    ctr_y = boxes[..., 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx = deltas[..., 0] / wx
    dy = deltas[..., 1] / wy
    dw = (deltas[..., 2] / ww).clamp(max=SCALE_CLAMP)
    dh = (deltas[..., 3] / wh).clamp(max=SCALE_CLAMP)
    pred_ctr_x = dx * widths + ctr_x
    pred_ctr_y = dy * heights + ctr_y
    pred_w = torch.exp(dw) * widths
    pred_h = torch.exp(dh) * heights
    return torch.stack(
        [
            pred_ctr_x - 0.5 * pred_w,
            pred_ctr_y - 0.5 * pred_h,
            pred_ctr_x + 0.5 * pred_w,
            pred_ctr_y + 0.5 * pred_h,
        ],
        dim=-1,
    )
