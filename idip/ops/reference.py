"""Plain-PyTorch reference implementations of every ``idip.ops`` op.

These are the oracles the tests compare the kernels with on random inputs, the baselines of the
benchmarks, and what ``MODEL.USE_REFERENCE_OPS`` runs. They are written the way the anchors
(torchvision, detectron2, AdelaiDet, DiffusionDet) compute the same thing, for clarity rather
than speed. Each section belongs to one group of ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# ================================================================================================
# RoIAlign and NMS (ops 1-3)
# ================================================================================================

# ================================================================================================
# CondInst: aligned upsampling and the dynamic mask head (ops 4-5)
# ================================================================================================


def aligned_upsample(x: Tensor, factor: int) -> Tensor:
    """Reference of :func:`idip.ops.aligned_upsample`: CondInst's ``aligned_bilinear``.

    Replicate-pad one pixel right/bottom, bilinear resize with ``align_corners=True`` to
    (factor*H+1, factor*W+1), replicate-pad factor//2 left/top, crop to (factor*H, factor*W).

    Args:
        x: [N, C, H, W].
        factor: integer >= 1; 1 returns ``x`` itself.

    Returns:
        [N, C, factor*H, factor*W].
    """
    if x.dim() != 4:
        raise ValueError(f"aligned_upsample: x must be [N, C, H, W], got {tuple(x.shape)}")
    if int(factor) != factor or factor < 1:
        raise ValueError(f"aligned_upsample: factor must be an integer >= 1, got {factor}")
    factor = int(factor)
    if factor == 1:
        return x
    h, w = x.shape[2:]
    x = F.pad(x, pad=(0, 1, 0, 1), mode="replicate")
    oh, ow = factor * h + 1, factor * w + 1
    x = F.interpolate(x, size=(oh, ow), mode="bilinear", align_corners=True)
    x = F.pad(x, pad=(factor // 2, 0, factor // 2, 0), mode="replicate")
    return x[:, :, : oh - 1, : ow - 1]


def _dynamic_param_sizes(in0: int, channels: int, num_layers: int) -> tuple[list[int], list[int]]:
    """AdelaiDet's weight_nums and bias_nums of the per-instance network."""
    weight_nums, bias_nums = [], []
    for layer in range(num_layers):
        fan_in = in0 if layer == 0 else channels
        fan_out = 1 if layer == num_layers - 1 else channels
        weight_nums.append(fan_in * fan_out)
        bias_nums.append(fan_out)
    return weight_nums, bias_nums


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
    """Reference of :func:`idip.ops.dynamic_mask_head`: AdelaiDet's grouped-convolution form.

    The inputs of every instance (relative coordinates, then its image's mask features) are
    concatenated into one image of N*(C+2) channels and run through ``num_layers`` grouped 1x1
    convolutions (groups=N), ReLU between them.

    Args:
        mask_feats: [B, C, H, W].
        params: [N, P], all layer weights then all biases; layer l's weight block [out_l, in_l].
        im_inds: [N] integer image index of every instance.
        locations: [N, 2] (x, y) image coordinates of every instance's location.
        soi: [N] size of interest normalising the relative coordinates.
        mask_stride: stride of mask_feats in the image.
        channels: hidden width of the network.
        num_layers: number of 1x1 layers.
        rel_coords: whether the two relative coordinates are inputs.

    Returns:
        [N, 1, H, W] mask logits.
    """
    B, C, H, W = mask_feats.shape
    N = params.shape[0]
    in0 = C + 2 if rel_coords else C
    weight_nums, bias_nums = _dynamic_param_sizes(in0, channels, num_layers)
    if params.dim() != 2 or params.shape[1] != sum(weight_nums) + sum(bias_nums):
        raise ValueError(
            f"dynamic_mask_head: params must be [N, {sum(weight_nums) + sum(bias_nums)}], "
            f"got {tuple(params.shape)}"
        )
    if N == 0:
        # Connected to both inputs so that their gradients are (empty-sum) zeros.
        return mask_feats.new_zeros((0, 1, H, W)) + 0 * (mask_feats.sum() + params.sum())
    x = mask_feats[im_inds.long()].reshape(N, C, H * W)
    if rel_coords:
        coord_dtype = torch.promote_types(mask_feats.dtype, torch.float32)
        shifts_x = torch.arange(0, W * mask_stride, mask_stride, dtype=coord_dtype, device=x.device)
        shifts_y = torch.arange(0, H * mask_stride, mask_stride, dtype=coord_dtype, device=x.device)
        shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
        grid = torch.stack((shift_x.reshape(-1), shift_y.reshape(-1)), dim=1) + mask_stride // 2
        rel = locations.to(coord_dtype).reshape(-1, 1, 2) - grid.reshape(1, -1, 2)
        rel = rel.permute(0, 2, 1) / soi.to(coord_dtype).reshape(-1, 1, 1)
        x = torch.cat([rel.to(mask_feats.dtype), x], dim=1)
    x = x.reshape(1, N * in0, H, W)
    splits = torch.split_with_sizes(params, weight_nums + bias_nums, dim=1)
    for layer in range(num_layers):
        fan_out = bias_nums[layer]
        weight = splits[layer].reshape(N * fan_out, -1, 1, 1)
        bias = splits[num_layers + layer].reshape(N * fan_out)
        x = F.conv2d(x, weight, bias=bias, stride=1, padding=0, groups=N)
        if layer < num_layers - 1:
            x = F.relu(x)
    return x.reshape(N, 1, H, W)


# ================================================================================================
# Diffusion box scheduling (ops 6-7)
# ================================================================================================


def box_to_abs(x: Tensor, image_size: Tensor) -> Tensor:
    """to_abs of DESIGN.md: [B, N, 4] normalised cxcywh in [-1, 1] -> [B, N, 4] absolute xyxy.

    ``image_size`` is [B, 4] (w, h, w, h).
    """
    c = ((x + 1) / 2).clamp(0, 1)
    cx, cy = c[..., 0], c[..., 1]
    w, h = c[..., 2].clamp(min=1e-4), c[..., 3].clamp(min=1e-4)
    xyxy = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)
    return xyxy.clamp(0, 1) * image_size[:, None, :]


def box_q_sample(
    x_start: Tensor, noise: Tensor, t: Tensor, alphas_cumprod: Tensor, image_size: Tensor
) -> tuple[Tensor, Tensor]:
    """Reference of :func:`idip.ops.box_q_sample` (DiffusionDet's q_sample + box conversion)."""
    a = alphas_cumprod.to(x_start.dtype)[t][:, None, None]
    x_t = a.sqrt() * x_start + (1 - a).sqrt() * noise
    return x_t, box_to_abs(x_t, image_size)
