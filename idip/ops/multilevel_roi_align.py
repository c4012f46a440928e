"""``multilevel_roi_align``: FPN RoIAlign — each RoI pooled from its level, in one kernel launch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from . import _extension
from .roi_align import _pair


def multilevel_roi_align(
    features: Sequence[Tensor],
    rois: Tensor,
    output_size: int | tuple[int, int],
    scales: Sequence[float],
    sampling_ratio: int,
    aligned: bool = True,
    canonical_box_size: float = 224,
    canonical_level: int = 4,
) -> Tensor:
    """RoIAlign over a feature pyramid: detectron2's ROIPooler in one launch.

    RoI (x1, y1, x2, y2) goes to level
    ``floor(canonical_level + log2(sqrt(area) / canonical_box_size + 1e-8))`` clamped to the levels
    given (level k has scale 1/2**k; a negative area counts as 0), and is pooled there exactly as
    :func:`idip.ops.roi_align` would. No per-level loop and no host synchronisation.
    Differentiable w.r.t. every feature map.

    Args:
        features: L feature maps [N, C, H_l, W_l] of consecutive levels, finest first (e.g.
            p3, p4, p5), one dtype and device.
        rois: [K, 5] rows of (batch_index, x1, y1, x2, y2) in image coordinates.
        output_size: pooled size, an int or (height, width).
        scales: L scales 1/2**k, e.g. (1/8, 1/16, 1/32).
        sampling_ratio: sampling points per bin along each axis (<= 0: adaptive).
        aligned: pixel-centre alignment (ROIAlignV2).
        canonical_box_size: box size (sqrt of area) that maps to ``canonical_level``.
        canonical_level: the level of a canonical box (4 in the FPN paper).

    Returns:
        [K, C, output_h, output_w] pooled features, in the order of ``rois``.
    """
    ph, pw = _pair(output_size)
    if len(features) != len(scales):
        raise ValueError(
            f"multilevel_roi_align: got {len(features)} feature maps but {len(scales)} scales"
        )
    return _extension.kernels().multilevel_roi_align(
        list(features),
        rois,
        ph,
        pw,
        [float(s) for s in scales],
        int(sampling_ratio),
        bool(aligned),
        float(canonical_box_size),
        int(canonical_level),
    )


def _fake_forward(
    features,
    rois,
    pooled_height,
    pooled_width,
    scales,
    sampling_ratio,
    aligned,
    canonical_box_size,
    canonical_level,
):
    torch._check(len(features) > 0, lambda: "multilevel_roi_align: features must not be empty")
    torch._check(len(features) == len(scales), lambda: "multilevel_roi_align: one scale per level")
    f0 = features[0]
    torch._check(
        rois.dim() == 2 and rois.shape[1] == 5,
        lambda: f"multilevel_roi_align: rois must be [K, 5], got {rois.shape}",
    )
    for f in features:
        torch._check(
            f.dim() == 4 and f.dtype == f0.dtype, lambda: "multilevel_roi_align: bad features"
        )
    return f0.new_empty((rois.shape[0], f0.shape[1], pooled_height, pooled_width))


def _fake_backward(
    grad,
    rois,
    batch_size,
    channels,
    heights,
    widths,
    scales,
    sampling_ratio,
    aligned,
    canonical_box_size,
    canonical_level,
):
    return [grad.new_empty((batch_size, channels, h, w)) for h, w in zip(heights, widths)]


def _setup_context(ctx, inputs, output):
    features, rois, _, _, scales, sampling_ratio, aligned, box_size, level = inputs
    ctx.save_for_backward(rois)
    ctx.batch_size, ctx.channels = features[0].shape[0], features[0].shape[1]
    ctx.heights = [f.shape[2] for f in features]
    ctx.widths = [f.shape[3] for f in features]
    ctx.args = (scales, sampling_ratio, aligned, box_size, level)


@_extension.for_each_library
def _register(namespace: str) -> None:
    library = getattr(torch.ops, namespace)

    def backward(ctx, grad):
        (rois,) = ctx.saved_tensors
        grads = library.multilevel_roi_align_backward(
            grad, rois, ctx.batch_size, ctx.channels, ctx.heights, ctx.widths, *ctx.args
        )
        return list(grads), None, None, None, None, None, None, None, None

    torch.library.register_fake(f"{namespace}::multilevel_roi_align")(_fake_forward)
    torch.library.register_fake(f"{namespace}::multilevel_roi_align_backward")(_fake_backward)
    torch.library.register_autograd(
        f"{namespace}::multilevel_roi_align", backward, setup_context=_setup_context
    )
