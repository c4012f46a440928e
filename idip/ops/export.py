"""The ops in exported programs: static-shape decompositions and ONNX translations.

``torch.export`` keeps every ``torch.ops.idip`` op as one node, traced through its fake kernel;
an ExportedProgram that holds them runs wherever ``idip.ops`` is imported (it loads the
kernels). ONNX has no such ops, so :func:`onnx_decompositions` rewrites them into standard
operators before the ONNX conversion, each with the numbers of its kernel:

- ``aligned_upsample``, ``dynamic_mask_head``, ``box_q_sample``: their plain-PyTorch references
  (:mod:`idip.ops.reference`), whose shapes are static (pad + resize; a grouped 1x1 convolution
  per layer; arithmetic);
- ``box_ddim_step``: :func:`box_ddim_step_static`, the renewal written with a sort instead of
  boolean indexing;
- ``multilevel_roi_align``: :func:`multilevel_roi_align_static`, a ``roi_align`` of every RoI on
  every level and a select by each RoI's level (L times the work of the kernel, no gather of a
  data-dependent number of RoIs).

:func:`onnx_translations` maps the remaining ``roi_align``, ``nms`` and ``batched_nms`` to the
ONNX operators ``RoiAlign`` and ``NonMaxSuppression`` (opset 18) for ``torch.onnx.export``'s
``custom_translation_table``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from . import reference

ONNX_OPSET = 18  # the opset of the translations below (RoiAlign's half_pixel mode needs >= 16)


def box_ddim_step_static(
    x_t: Tensor,
    pred_boxes: Tensor,
    image_size: Tensor,
    alpha: float,
    alpha_next: float,
    eta: float,
    keep: Tensor,
    noise: Tensor,
    renew: Tensor,
) -> tuple[Tensor, Tensor]:
    """:func:`idip.ops.box_ddim_step` in tensor ops with static shapes (see its docstring).

    The renewal moves the kept rows of image b to the front in their order: their destination
    is the running count of kept rows before them, so sorting the keys (destination for kept
    rows, N + row for the others, all distinct) lists the kept rows first; output rows at or
    after K_b read ``renew[b, row - K_b]``.

    Args:
        x_t, pred_boxes, noise, renew: [B, N, 4]; image_size: [B, 4]; keep: [B, N] bool.

    Returns:
        (x_next [B, N, 4], boxes_next [B, N, 4] absolute xyxy).
    """
    sigma = (
        0.0
        if eta == 0
        else eta * ((1 - alpha / alpha_next) * ((1 - alpha_next) / (1 - alpha))) ** 0.5
    )
    c = max(1 - alpha_next - sigma**2, 0.0) ** 0.5
    xyxy = pred_boxes / image_size[:, None, :]
    cxcywh = torch.stack(
        [
            (xyxy[..., 0] + xyxy[..., 2]) / 2,
            (xyxy[..., 1] + xyxy[..., 3]) / 2,
            xyxy[..., 2] - xyxy[..., 0],
            xyxy[..., 3] - xyxy[..., 1],
        ],
        dim=-1,
    )
    x0 = cxcywh.clamp(0, 1) * 2 - 1
    eps = (x_t - alpha**0.5 * x0) / (1 - alpha) ** 0.5
    moved = alpha_next**0.5 * x0 + c * eps + sigma * noise
    n = x_t.shape[1]
    rows = torch.arange(n, device=x_t.device)[None, :]
    kept = keep.to(torch.int64)
    destination = kept.cumsum(1) - kept
    order = torch.argsort(torch.where(keep, destination, rows + n), dim=1)
    num_kept = kept.sum(1, keepdim=True)
    front = moved.gather(1, order[..., None].expand(-1, -1, 4))
    fresh = renew.gather(1, (rows - num_kept).clamp(min=0)[..., None].expand(-1, -1, 4))
    x_next = torch.where((rows < num_kept)[..., None], front, fresh)
    return x_next, reference.box_to_abs(x_next, image_size)


def multilevel_roi_align_static(
    features: list[Tensor],
    rois: Tensor,
    pooled_height: int,
    pooled_width: int,
    scales: list[float],
    sampling_ratio: int,
    aligned: bool,
    canonical_box_size: float,
    canonical_level: int,
) -> Tensor:
    """:func:`idip.ops.multilevel_roi_align` with static shapes: ``roi_align`` of all K RoIs on
    each level, each RoI's row taken from its level (detectron2's assignment rule).

    Args:
        features: L maps [N, C, H_l, W_l], finest first; rois: [K, 5].

    Returns:
        [K, C, pooled_height, pooled_width].
    """
    first = reference._first_level(scales)
    level = reference.assign_fpn_levels(
        rois, len(features), first, canonical_box_size, canonical_level
    )
    out = None
    for i, (feature, scale) in enumerate(zip(features, scales)):
        pooled = torch.ops.idip.roi_align.default(
            feature, rois, pooled_height, pooled_width, scale, sampling_ratio, aligned
        )
        here = (level == i)[:, None, None, None]
        out = pooled if out is None else torch.where(here, pooled, out)
    return out


def onnx_decompositions() -> dict[Callable, Callable]:
    """``ExportedProgram.run_decompositions`` table: each ``torch.ops.idip`` op that ONNX has
    no operator for -> a static-shape function of standard ops (and ``idip.roi_align``)."""
    ops = torch.ops.idip
    return {
        ops.aligned_upsample.default: reference.aligned_upsample,
        ops.dynamic_mask_head.default: reference.dynamic_mask_head,
        ops.box_q_sample.default: reference.box_q_sample,
        ops.box_ddim_step.default: box_ddim_step_static,
        ops.multilevel_roi_align.default: multilevel_roi_align_static,
    }


def onnx_translations() -> dict[Callable, Callable]:
    """``torch.onnx.export(custom_translation_table=...)``: ``roi_align``, ``nms`` and
    ``batched_nms`` as ONNX ``RoiAlign`` / ``NonMaxSuppression`` (opset :data:`ONNX_OPSET`).

    Needs onnxscript (imported here, so that ``idip.ops`` does not depend on it).
    """
    from onnxscript import INT64
    from onnxscript import opset18 as op

    def roi_align(input, rois, pooled_height, pooled_width, spatial_scale, sampling_ratio, aligned):
        # ONNX RoiAlign takes the batch index as its own int64 input. half_pixel is the -0.5
        # pixel shift of aligned=True; output_half_pixel the legacy mode, which (like ours)
        # also makes every RoI at least 1x1. Sampling ratio 0 is the adaptive one.
        batch = op.Cast(op.Squeeze(op.Slice(rois, [0], [1], [1]), [1]), to=INT64.dtype)
        boxes = op.Slice(rois, [1], [5], [1])
        return op.RoiAlign(
            input,
            boxes,
            batch,
            coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel",
            mode="avg",
            output_height=pooled_height,
            output_width=pooled_width,
            sampling_ratio=max(int(sampling_ratio), 0),
            spatial_scale=float(spatial_scale),
        )

    def _by_score(selected, scores):
        """[M] kept indices (any order) -> by decreasing score, equal scores in index order.

        TopK breaks ties by position, so the indices are sorted ascending first."""
        count = op.Shape(selected)
        ascending = op.TopK(selected, count, axis=0, largest=0, sorted=1)[0]
        order = op.TopK(op.Gather(scores, ascending), count, axis=0, largest=1, sorted=1)[1]
        return op.Gather(ascending, order)

    def _suppress(boxes, class_scores, scores, iou_threshold):
        """ONNX NMS over [1, C, K] class scores (-inf where a box is not of class c)."""
        k = op.Shape(boxes, start=0, end=1)
        lowest = op.Constant(value_float=float(torch.finfo(torch.float32).min))
        selected = op.NonMaxSuppression(
            op.Unsqueeze(boxes, [0]),
            class_scores,
            k,
            op.Constant(value_float=float(iou_threshold)),
            lowest,
        )
        return _by_score(op.Squeeze(op.Slice(selected, [2], [3], [1]), [1]), scores)

    def nms(boxes, scores, iou_threshold):
        return _suppress(boxes, op.Unsqueeze(scores, [0, 1]), scores, iou_threshold)

    def batched_nms(boxes, scores, idxs, iou_threshold):
        # One ONNX class per distinct idxs value 0..max: scores outside a box's class are -inf,
        # below the score threshold (the lowest float), so each class only sees its boxes.
        classes = op.Range(
            op.Constant(value_int=0),
            op.Add(op.ReduceMax(op.Cast(idxs, to=INT64.dtype), keepdims=0), 1),
            op.Constant(value_int=1),
        )
        member = op.Equal(
            op.Unsqueeze(classes, [1]), op.Unsqueeze(op.Cast(idxs, to=INT64.dtype), [0])
        )
        minus_inf = op.CastLike(op.Constant(value_float=float("-inf")), scores)
        class_scores = op.Where(member, op.Unsqueeze(scores, [0]), minus_inf)
        return _suppress(boxes, op.Unsqueeze(class_scores, [0]), scores, iou_threshold)

    ops = torch.ops.idip
    return {
        ops.roi_align.default: roi_align,
        ops.nms.default: nms,
        ops.batched_nms.default: batched_nms,
    }
