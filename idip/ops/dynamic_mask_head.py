"""``dynamic_mask_head``: CondInst's per-instance dynamic 1x1-conv mask network, fused."""

from __future__ import annotations

import torch
from torch import Tensor

from . import _extension


def dynamic_mask_head_param_counts(
    in_channels: int, channels: int, num_layers: int, rel_coords: bool = True
) -> tuple[list[int], list[int]]:
    """Sizes of the weight and bias blocks of the per-instance network (CondInst's layout).

    Layer l maps in_l -> out_l with in_0 = in_channels (+2 with relative coordinates), in_l =
    channels otherwise, out_l = 1 for the last layer and channels otherwise (AdelaiDet's
    parse_dynamic_params). The one definition of the layout on the Python side; the kernels'
    is ``MaskHeadLayout`` in ``csrc/dynamic_mask_head.h``.

    Returns:
        (weight_nums, bias_nums): lists over layers of in_l*out_l and out_l. Their total is the
        number of parameters per instance (169 for 8 mask channels, 8 channels, 3 layers).

    Raises:
        ValueError: num_layers < 1, channels < 1 or in_channels < 0.
    """
    if num_layers < 1 or channels < 1 or in_channels < 0:
        raise ValueError(
            f"dynamic_mask_head: need num_layers >= 1, channels >= 1 and in_channels >= 0, got "
            f"num_layers={num_layers}, channels={channels}, in_channels={in_channels}"
        )
    weight_nums, bias_nums = [], []
    for layer in range(num_layers):
        fan_in = (in_channels + 2 if rel_coords else in_channels) if layer == 0 else channels
        fan_out = 1 if layer == num_layers - 1 else channels
        weight_nums.append(fan_in * fan_out)
        bias_nums.append(fan_out)
    return weight_nums, bias_nums


def split_dynamic_mask_head_params(
    params: Tensor, in_channels: int, channels: int, num_layers: int, rel_coords: bool = True
) -> tuple[list[Tensor], list[Tensor]]:
    """Views [N, P] per-instance parameters as per-layer weights and biases.

    All weight blocks come first, then all bias blocks; layer l's weight block is [out_l, in_l]
    row-major (sizes: :func:`dynamic_mask_head_param_counts`).

    Returns:
        (weights, biases): lists over layers of [N, out_l, in_l] and [N, out_l].

    Raises:
        ValueError: params is not [N, P] with the P of these sizes, or the sizes are invalid.
    """
    weight_nums, bias_nums = dynamic_mask_head_param_counts(
        in_channels, channels, num_layers, rel_coords
    )
    num_params = sum(weight_nums) + sum(bias_nums)
    if params.dim() != 2 or params.shape[1] != num_params:
        raise ValueError(
            f"dynamic_mask_head: params must be [N, {num_params}] for {in_channels} mask "
            f"channels, channels={channels}, num_layers={num_layers}, rel_coords={rel_coords}; "
            f"got {tuple(params.shape)}"
        )
    blocks = torch.split(params, weight_nums + bias_nums, dim=1)
    n = params.shape[0]
    weights = [
        w.reshape(n, fan_out, size // fan_out)
        for w, size, fan_out in zip(blocks[:num_layers], weight_nums, bias_nums)
    ]
    return weights, list(blocks[num_layers:])


def dynamic_mask_head_num_params(
    in_channels: int, channels: int = 8, num_layers: int = 3, rel_coords: bool = True
) -> int:
    """Number P of dynamic parameters per instance (what CondInst's controller predicts): the
    total of :func:`dynamic_mask_head_param_counts`. 169 for 8 channels, 8 mask channels, 3
    layers."""
    weight_nums, bias_nums = dynamic_mask_head_param_counts(
        in_channels, channels, num_layers, rel_coords
    )
    return sum(weight_nums) + sum(bias_nums)


def dynamic_mask_head(
    mask_feats: Tensor,
    params: Tensor,
    im_inds: Tensor,
    locations: Tensor,
    soi: Tensor,
    mask_stride: int,
    channels: int = 8,
    num_layers: int = 3,
    rel_coords: bool = True,
) -> Tensor:
    """Runs every instance's dynamic mask network over its image's mask features, fused.

    For instance n and pixel (y, x) the input vector is ``[rel_x, rel_y, mask_feats[im_inds[n],
    :, y, x]]`` with ``rel = (locations[n] - grid(y, x)) / soi[n]`` and ``grid(y, x) =
    (x*mask_stride + mask_stride//2, y*mask_stride + mask_stride//2)`` (without the two
    coordinates when ``rel_coords`` is False); then ``num_layers`` 1x1 layers
    (in_0 -> channels -> ... -> 1) with ReLU between them and none after the last. Each pixel's
    network runs in registers: no N x C x H x W tensor is ever formed. Differentiable w.r.t.
    ``mask_feats`` and ``params`` (not ``locations``/``soi``). float32/float64 and
    float16/bfloat16 (float32 accumulation; the CPU computes them in float32), output in the
    input dtype.

    Args:
        mask_feats: [B, C, H, W] mask-branch features.
        params: [N, P] per-instance parameters, same dtype as ``mask_feats``; all layer weights
            first, then all biases; layer l's weight block is [out_l, in_l] row-major.
            P = :func:`dynamic_mask_head_num_params` (C, channels, num_layers, rel_coords).
        im_inds: [N] integer index into the batch of each instance's image.
        locations: [N, 2] (x, y) image coordinates of each instance's location.
        soi: [N] size of interest of each instance's FPN level.
        mask_stride: stride of ``mask_feats`` in image pixels.
        channels: hidden width of the network (8 in CondInst).
        num_layers: number of 1x1 layers (3 in CondInst).
        rel_coords: whether the relative coordinates are inputs.

    Returns:
        [N, 1, H, W] mask logits in the dtype of ``mask_feats``.
    """
    if mask_feats.dim() == 4 and params.dim() == 2:
        expected = dynamic_mask_head_num_params(
            mask_feats.shape[1], channels, num_layers, rel_coords
        )
        if params.shape[1] != expected:
            raise ValueError(
                f"dynamic_mask_head: params must be [N, {expected}] for {mask_feats.shape[1]} mask "
                f"channels, channels={channels}, num_layers={num_layers}, rel_coords={rel_coords}; "
                f"got {tuple(params.shape)}"
            )
    return _extension.kernels().dynamic_mask_head(
        mask_feats, params, im_inds, locations, soi, mask_stride, channels, num_layers, rel_coords
    )


def _fake_forward(
    mask_feats,
    params,
    im_inds,
    locations,
    soi,
    mask_stride,
    channels=8,
    num_layers=3,
    rel_coords=True,
):
    torch._check(
        mask_feats.dim() == 4, lambda: "dynamic_mask_head: mask_feats must be [B, C, H, W]"
    )
    expected = dynamic_mask_head_num_params(mask_feats.shape[1], channels, num_layers, rel_coords)
    torch._check(
        params.dim() == 2 and params.shape[1] == expected,
        lambda: f"dynamic_mask_head: params must be [N, {expected}]",
    )
    return mask_feats.new_empty((params.shape[0], 1, mask_feats.shape[2], mask_feats.shape[3]))


def _fake_backward(
    grad, mask_feats, params, im_inds, locations, soi, mask_stride, channels, num_layers, rel_coords
):
    return torch.empty_like(mask_feats), torch.empty_like(params)


def _setup_context(ctx, inputs, output):
    mask_feats, params, im_inds, locations, soi, mask_stride, channels, num_layers, rel_coords = (
        inputs
    )
    ctx.save_for_backward(mask_feats, params, im_inds, locations, soi)
    ctx.config = (mask_stride, channels, num_layers, rel_coords)


@_extension.for_each_library
def _register(namespace: str) -> None:
    library = getattr(torch.ops, namespace)

    def backward(ctx, grad):
        mask_feats, params, im_inds, locations, soi = ctx.saved_tensors
        grad_feats, grad_params = library.dynamic_mask_head_backward(
            grad, mask_feats, params, im_inds, locations, soi, *ctx.config
        )
        return grad_feats, grad_params, None, None, None, None, None, None, None

    torch.library.register_fake(f"{namespace}::dynamic_mask_head")(_fake_forward)
    torch.library.register_fake(f"{namespace}::dynamic_mask_head_backward")(_fake_backward)
    torch.library.register_autograd(
        f"{namespace}::dynamic_mask_head", backward, setup_context=_setup_context
    )
