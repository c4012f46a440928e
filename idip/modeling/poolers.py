"""RoI feature pooling over FPN levels."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .op_library import op_library


def boxes_to_rois(boxes: Tensor) -> Tensor:
    """[B, N, 4] xyxy boxes -> [B*N, 5] rois (batch_index, x1, y1, x2, y2)."""
    if boxes.dim() != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be [B, N, 4], got {tuple(boxes.shape)}")
    b, n, _ = boxes.shape
    index = torch.arange(b, device=boxes.device, dtype=boxes.dtype).repeat_interleave(n)
    return torch.cat([index[:, None], boxes.reshape(b * n, 4)], dim=1)


def box_lists_to_rois(boxes: list[Tensor], image_indices: list[int] | None = None) -> Tensor:
    """Per-image [K_i, 4] xyxy boxes -> [sum K_i, 5] rois (batch_index, x1, y1, x2, y2).

    ``image_indices`` gives each list entry's batch index (default: its position).
    """
    indices = range(len(boxes)) if image_indices is None else image_indices
    rows = [
        torch.cat([b.new_full((b.shape[0], 1), float(i)), b], dim=1) for i, b in zip(indices, boxes)
    ]
    return torch.cat(rows, dim=0) if rows else torch.zeros((0, 5))


class MultiLevelRoIPooler(nn.Module):
    """RoIAlign (aligned, detectron2's ROIAlignV2) on the FPN level chosen by each box's size.

    A box of area A goes to level ``floor(4 + log2(sqrt(A) / 224))`` clamped to the levels given —
    detectron2's ROIPooler assignment — in one ``multilevel_roi_align`` call.

    Args:
        output_size: side of the pooled square (7 for boxes, 14 for masks).
        strides: stride of each feature level, finest first (8, 16, 32 for p3-p5).
        sampling_ratio: bilinear samples per bin side (0: adaptive).
        use_reference_ops: pool with ``idip.ops.reference`` instead of the kernel.
    """

    def __init__(
        self,
        output_size: int,
        strides: list[int],
        sampling_ratio: int,
        use_reference_ops: bool = False,
    ):
        super().__init__()
        levels = [math.log2(s) for s in strides]
        if any(abs(lv - round(lv)) > 1e-6 for lv in levels):
            raise ValueError(f"strides must be powers of two, got {strides}")
        if any(round(b) - round(a) != 1 for a, b in zip(levels, levels[1:])):
            raise ValueError(
                f"strides must be consecutive powers of two, finest first, got {strides}"
            )
        self.output_size = output_size
        self.scales = [1.0 / s for s in strides]
        self.sampling_ratio = sampling_ratio
        self.use_reference_ops = bool(use_reference_ops)

    def forward(self, features: list[Tensor], rois: Tensor) -> Tensor:
        """Pools ``features`` (finest first, [B, C, H_l, W_l] each) at ``rois`` [K, 5] -> [K, C, S, S]."""
        if rois.numel() == 0:
            c = features[0].shape[1]
            return features[0].new_zeros((0, c, self.output_size, self.output_size))
        if features[0].dtype in (torch.float16, torch.bfloat16):
            # Under autocast: pool in float32, as torchvision's autocast policy does. Boxes in
            # bfloat16 would be off by up to 4 pixels at x ~ 1000, before any pooling error.
            features = [f.float() for f in features]
        return op_library(self.use_reference_ops).multilevel_roi_align(
            features,
            rois.to(features[0].dtype),
            self.output_size,
            self.scales,
            self.sampling_ratio,
            True,
            224,
            4,
        )
