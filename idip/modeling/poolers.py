"""RoI feature pooling over FPN levels, and the choice between ``idip.ops`` and its references."""

from __future__ import annotations

import math
from types import ModuleType

import torch
from torch import Tensor, nn


def select_ops(use_reference: bool) -> ModuleType:
    """``idip.ops`` (the compiled kernels) or ``idip.ops.reference`` (same names, plain PyTorch).

    This is what ``MODEL.USE_REFERENCE_OPS`` switches.
    """
    if use_reference:
        from ..ops import reference as ops
    else:
        import idip.ops as ops
    return ops


def boxes_to_rois(boxes: Tensor) -> Tensor:
    """[B, N, 4] xyxy boxes -> [B*N, 5] rois (batch_index, x1, y1, x2, y2)."""
    if boxes.dim() != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be [B, N, 4], got {tuple(boxes.shape)}")
    b, n, _ = boxes.shape
    index = torch.arange(b, device=boxes.device, dtype=boxes.dtype).repeat_interleave(n)
    return torch.cat([index[:, None], boxes.reshape(b * n, 4)], dim=1)


def box_lists_to_rois(boxes: list[Tensor]) -> Tensor:
    """Per-image [K_i, 4] xyxy boxes -> [sum K_i, 5] rois (batch_index, x1, y1, x2, y2)."""
    rows = []
    for i, b in enumerate(boxes):
        rows.append(torch.cat([torch.full_like(b[:, :1], float(i)), b], dim=1))
    return torch.cat(rows, dim=0)


class MultiLevelRoIPooler(nn.Module):
    """RoIAlign (aligned, detectron2's ROIAlignV2) on the FPN level chosen by each box's size.

    A box of area A goes to level ``floor(4 + log2(sqrt(A) / 224))`` clamped to the levels given —
    detectron2's ROIPooler assignment — in one ``multilevel_roi_align`` call.

    Args:
        output_size: side of the pooled square (7 for boxes, 14 for masks).
        strides: stride of each feature level, finest first (8, 16, 32 for p3-p5).
        sampling_ratio: bilinear samples per bin side (0: adaptive).
        ops: module providing ``multilevel_roi_align`` (:func:`select_ops`).
    """

    def __init__(self, output_size: int, strides: list[int], sampling_ratio: int, ops: ModuleType):
        super().__init__()
        levels = [math.log2(s) for s in strides]
        if any(abs(lv - round(lv)) > 1e-6 for lv in levels):
            raise ValueError(f"strides must be powers of two, got {strides}")
        if any(round(b) - round(a) != 1 for a, b in zip(levels, levels[1:])):
            raise ValueError(f"strides must be consecutive powers of two, finest first, got {strides}")
        self.output_size = output_size
        self.scales = [1.0 / s for s in strides]
        self.sampling_ratio = sampling_ratio
        self.ops = ops

    def forward(self, features: list[Tensor], rois: Tensor) -> Tensor:
        """Pools ``features`` (finest first, [B, C, H_l, W_l] each) at ``rois`` [K, 5] -> [K, C, S, S]."""
        if rois.numel() == 0:
            c = features[0].shape[1]
            return features[0].new_zeros((0, c, self.output_size, self.output_size))
        if features[0].dtype in (torch.float16, torch.bfloat16):
            # Under autocast: pool in float32, as torchvision's autocast policy does. Boxes in
            # bfloat16 would be off by up to 4 pixels at x ~ 1000, before any pooling error.
            features = [f.float() for f in features]
        return self.ops.multilevel_roi_align(
            features,
            rois.to(features[0].dtype),
            self.output_size,
            self.scales,
            self.sampling_ratio,
            True,
            224,
            4,
        )
