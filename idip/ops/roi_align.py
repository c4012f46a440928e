"""``roi_align``: bilinear RoI pooling of one feature map (torchvision's RoIAlign numbers)."""

from __future__ import annotations

import torch
from torch import Tensor

from . import _extension


def _pair(output_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(output_size, int):
        return output_size, output_size
    if len(output_size) != 2:
        raise ValueError(f"output_size must be an int or (height, width), got {output_size!r}")
    return int(output_size[0]), int(output_size[1])


def roi_align(
    input: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int = -1,
    aligned: bool = True,
) -> Tensor:
    """Pools a fixed-size feature for every RoI by averaging bilinear samples in each bin.

    The same numbers as ``torchvision.ops.roi_align`` with the same arguments; ``aligned=True``
    shifts the box by -0.5 pixel (detectron2's ROIAlignV2), ``aligned=False`` is the legacy
    version that also forces every RoI to be at least 1x1. Differentiable w.r.t. ``input``.

    Args:
        input: [N, C, H, W] features (float32/float64, float16/bfloat16: on the CPU pooled in float32).
        rois: [K, 5] rows of (batch_index, x1, y1, x2, y2) in image coordinates, same dtype and
            device as ``input``.
        output_size: pooled size, an int or (height, width).
        spatial_scale: image -> feature coordinates (e.g. 1/8 for stride 8).
        sampling_ratio: sampling points per bin along each axis; <= 0 adapts it to the RoI
            (ceil(roi_size / output_size)).
        aligned: pixel-centre alignment (ROIAlignV2).

    Returns:
        [K, C, output_h, output_w] pooled features.
    """
    ph, pw = _pair(output_size)
    return _extension.kernels().roi_align(
        input, rois, ph, pw, float(spatial_scale), int(sampling_ratio), bool(aligned)
    )


def _fake_roi_align(
    input, rois, pooled_height, pooled_width, spatial_scale, sampling_ratio, aligned
):
    torch._check(
        input.dim() == 4, lambda: f"roi_align: input must be [N, C, H, W], got {input.shape}"
    )
    torch._check(
        rois.dim() == 2 and rois.shape[1] == 5,
        lambda: f"roi_align: rois must be [K, 5], got {rois.shape}",
    )
    torch._check(rois.dtype == input.dtype, lambda: "roi_align: rois must have the dtype of input")
    return input.new_empty((rois.shape[0], input.shape[1], pooled_height, pooled_width))


def _fake_roi_align_backward(grad, rois, input_shape, spatial_scale, sampling_ratio, aligned):
    torch._check(
        len(input_shape) == 4, lambda: "roi_align_backward: input_shape must be (N, C, H, W)"
    )
    return grad.new_empty(tuple(input_shape))


def _setup_context(ctx, inputs, output):
    input, rois, _, _, spatial_scale, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois)
    ctx.input_shape = tuple(input.shape)
    ctx.spatial_scale = spatial_scale
    ctx.sampling_ratio = sampling_ratio
    ctx.aligned = aligned


@_extension.for_each_library
def _register(namespace: str) -> None:
    library = getattr(torch.ops, namespace)

    def backward(ctx, grad):
        (rois,) = ctx.saved_tensors
        grad_input = library.roi_align_backward(
            grad, rois, ctx.input_shape, ctx.spatial_scale, ctx.sampling_ratio, ctx.aligned
        )
        return grad_input, None, None, None, None, None, None

    torch.library.register_fake(f"{namespace}::roi_align")(_fake_roi_align)
    torch.library.register_fake(f"{namespace}::roi_align_backward")(_fake_roi_align_backward)
    torch.library.register_autograd(
        f"{namespace}::roi_align", backward, setup_context=_setup_context
    )
