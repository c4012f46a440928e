"""``aligned_upsample``: CondInst's aligned bilinear upsampling by an integer factor, one kernel."""

from __future__ import annotations

import torch
from torch import Tensor

from . import _extension


def aligned_upsample(x: Tensor, factor: int) -> Tensor:
    """Upsamples ``x`` by an integer ``factor`` the way CondInst's ``aligned_bilinear`` does.

    Equal to: replicate-pad one pixel right/bottom, bilinear resize with ``align_corners=True``
    to (factor*H+1, factor*W+1), replicate-pad factor//2 left/top, crop to (factor*H, factor*W);
    computed directly by one kernel (forward and backward). ``factor == 1`` returns ``x`` itself,
    as the reference does. float32/float64 (and float16/bfloat16) on CPU and CUDA.

    Args:
        x: [N, C, H, W] floating-point tensor.
        factor: integer >= 1.

    Returns:
        [N, C, factor*H, factor*W] in the dtype of ``x``.
    """
    if isinstance(factor, bool) or int(factor) != factor or factor < 1:
        raise ValueError(f"aligned_upsample: factor must be an integer >= 1, got {factor!r}")
    if x.dim() != 4:
        raise ValueError(f"aligned_upsample: x must be [N, C, H, W], got {tuple(x.shape)}")
    if factor == 1:
        return x
    return _extension.kernels().aligned_upsample(x, int(factor))


def _fake_forward(x, factor):
    torch._check(x.dim() == 4, lambda: "aligned_upsample: x must be [N, C, H, W]")
    torch._check(factor >= 1, lambda: "aligned_upsample: factor must be >= 1")
    n, c, h, w = x.shape
    return x.new_empty((n, c, h * factor, w * factor))


def _fake_backward(grad, factor, height, width):
    torch._check(grad.dim() == 4, lambda: "aligned_upsample_backward: grad must be 4-d")
    return grad.new_empty((grad.shape[0], grad.shape[1], height, width))


def _setup_context(ctx, inputs, output):
    x, factor = inputs
    ctx.factor = factor
    ctx.size = (x.shape[2], x.shape[3])


# The backward is linear in grad and its adjoint is the forward, so double backward is exact.
def _setup_backward_context(ctx, inputs, output):
    ctx.factor = inputs[1]


@_extension.for_each_library
def _register(namespace: str) -> None:
    library = getattr(torch.ops, namespace)

    def backward(ctx, grad):
        return library.aligned_upsample_backward(grad, ctx.factor, *ctx.size), None

    def backward_backward(ctx, grad_grad_in):
        return library.aligned_upsample(grad_grad_in, ctx.factor), None, None, None

    torch.library.register_fake(f"{namespace}::aligned_upsample")(_fake_forward)
    torch.library.register_fake(f"{namespace}::aligned_upsample_backward")(_fake_backward)
    torch.library.register_autograd(
        f"{namespace}::aligned_upsample", backward, setup_context=_setup_context
    )
    torch.library.register_autograd(
        f"{namespace}::aligned_upsample_backward",
        backward_backward,
        setup_context=_setup_backward_context,
    )
