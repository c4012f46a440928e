"""Plain-PyTorch reference implementations of every ``idip.ops`` op.

These are the oracles the tests compare the kernels with on random inputs, the baselines of the
benchmarks, and what ``MODEL.USE_REFERENCE_OPS`` runs. They are written the way the anchors
(torchvision, detectron2, AdelaiDet, DiffusionDet) compute the same thing, for clarity rather
than speed. Each section belongs to one group of ops.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .dynamic_mask_head import split_dynamic_mask_head_params


# ================================================================================================
# RoIAlign and NMS (ops 1-3)
# ================================================================================================
def _pair(output_size) -> tuple[int, int]:
    if isinstance(output_size, int):
        return output_size, output_size
    return int(output_size[0]), int(output_size[1])


def _bilinear_axis(
    start: Tensor, bin_size: Tensor, grid: Tensor, pooled: int, grid_max: int, size: int
):
    """Sampling coordinates along one axis and their bilinear neighbours, torchvision's way.

    Returns, each [K, pooled, grid_max]: low and high pixel indices, the weight of the high pixel,
    and whether the point is inside the map (more than one pixel outside counts as outside) and
    is one of the RoI's ``grid`` points (``grid_max`` is the largest grid of all RoIs).
    """
    p = torch.arange(pooled, device=start.device, dtype=start.dtype)[None, :, None]
    i = torch.arange(grid_max, device=start.device)[None, None, :]
    g = grid[:, None, None]
    coord = (
        start[:, None, None]
        + p * bin_size[:, None, None]
        + (i + 0.5).to(start.dtype) * bin_size[:, None, None] / g.to(start.dtype)
    )
    inside = (coord >= -1) & (coord <= size) & (i < g)
    coord = coord.clamp(min=0)
    low = coord.floor().long()  # coord >= 0 here, so floor equals the C cast
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    high = torch.where(at_edge, low, low + 1)
    coord = torch.where(at_edge, low.to(coord.dtype), coord)
    frac = coord - low.to(coord.dtype)
    # Points outside (possibly NaN or huge) read pixel 0 with weight 0.
    zero = torch.zeros_like(low)
    low, high = torch.where(inside, low, zero), torch.where(inside, high, zero)
    frac = torch.where(inside, frac, torch.zeros_like(frac))
    return low, high, frac, inside


def roi_align(
    input: Tensor,
    rois: Tensor,
    output_size,
    spatial_scale: float,
    sampling_ratio: int = -1,
    aligned: bool = True,
) -> Tensor:
    """Reference of :func:`idip.ops.roi_align` (torchvision's RoIAlign, vectorised with gathers).

    Every sampling point of every bin is interpolated from its four neighbours with advanced
    indexing; RoIs with fewer points than the largest grid are masked. Channels are processed in
    chunks to bound the memory of the [K, ph, gh, pw, gw, C] intermediates.
    """
    ph, pw = _pair(output_size)
    N, C, H, W = input.shape
    K = rois.shape[0]
    if K == 0 or H == 0 or W == 0:  # nothing to pool, or nothing to sample from
        return input.new_zeros((K, C, ph, pw))
    rois = rois.detach()
    offset = 0.5 if aligned else 0.0
    start_w = rois[:, 1] * spatial_scale - offset
    start_h = rois[:, 2] * spatial_scale - offset
    roi_w = rois[:, 3] * spatial_scale - offset - start_w
    roi_h = rois[:, 4] * spatial_scale - offset - start_h
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1), roi_h.clamp(min=1)
    bin_h, bin_w = roi_h / ph, roi_w / pw
    if sampling_ratio > 0:
        grid_h = torch.full((K,), sampling_ratio, dtype=torch.long, device=rois.device)
        grid_w = grid_h
    else:
        grid_h = torch.ceil(roi_h / ph).long()
        grid_w = torch.ceil(roi_w / pw).long()
    gh, gw = max(int(grid_h.max()), 1), max(int(grid_w.max()), 1)
    count = (grid_h * grid_w).clamp(min=1).to(input.dtype)
    y_lo, y_hi, ly, in_y = _bilinear_axis(start_h, bin_h, grid_h, ph, gh, H)  # [K, ph, gh]
    x_lo, x_hi, lx, in_x = _bilinear_axis(start_w, bin_w, grid_w, pw, gw, W)  # [K, pw, gw]
    # Broadcast to [K, ph, gh, pw, gw].
    y_lo, y_hi, ly, in_y = (t[:, :, :, None, None] for t in (y_lo, y_hi, ly, in_y))
    x_lo, x_hi, lx, in_x = (t[:, None, None, :, :] for t in (x_lo, x_hi, lx, in_x))
    hy, hx = 1 - ly, 1 - lx
    valid = (in_y & in_x).to(input.dtype)
    weights = [hy * hx * valid, hy * lx * valid, ly * hx * valid, ly * lx * valid]
    corners = [(y_lo, x_lo), (y_lo, x_hi), (y_hi, x_lo), (y_hi, x_hi)]
    b = rois[:, 0].long()[:, None, None, None, None]
    chunk = max(1, (1 << 24) // max(1, K * ph * gh * pw * gw))
    outs = []
    for c0 in range(0, C, chunk):
        feat = input[:, c0 : c0 + chunk].permute(0, 2, 3, 1)  # [N, H, W, c]
        val = sum(w[..., None] * feat[b, yy, xx] for w, (yy, xx) in zip(weights, corners))
        outs.append(val.sum(dim=(2, 4)))  # [K, ph, pw, c]
    out = torch.cat(outs, dim=-1) / count[:, None, None, None]
    return out.permute(0, 3, 1, 2).contiguous()


def assign_fpn_levels(
    rois: Tensor, num_levels: int, first_level: int, canonical_box_size: float, canonical_level: int
) -> Tensor:
    """[K] index (0..num_levels-1) of the level each RoI is pooled from (detectron2's rule).

    level = floor(canonical_level + log2(sqrt(area) / canonical_box_size + 1e-8)), clamped to
    [first_level, first_level + num_levels - 1]; a negative or NaN area counts as 0.
    """
    area = (rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2])
    area = torch.where(area > 0, area, torch.zeros_like(area))
    level = torch.floor(canonical_level + torch.log2(torch.sqrt(area) / canonical_box_size + 1e-8))
    level = level.clamp(first_level, first_level + num_levels - 1)
    return level.long() - first_level


def _first_level(scales) -> int:
    levels = [round(-math.log2(s)) for s in scales]
    if levels != list(range(levels[0], levels[0] + len(levels))):
        raise ValueError(
            f"scales must be consecutive levels 1/2**k, finest first, got {list(scales)}"
        )
    return levels[0]


def multilevel_roi_align_loop(
    roi_align_fn,
    features,
    rois: Tensor,
    output_size,
    scales,
    sampling_ratio: int,
    aligned: bool = True,
    canonical_box_size: float = 224,
    canonical_level: int = 4,
) -> Tensor:
    """detectron2's ROIPooler: assign levels, then one ``roi_align_fn`` call per level, with a
    gather of the level's RoIs and a scatter of their outputs."""
    ph, pw = _pair(output_size)
    first = _first_level(scales)
    level = assign_fpn_levels(rois, len(features), first, canonical_box_size, canonical_level)
    f0 = features[0]
    out = f0.new_zeros((rois.shape[0], f0.shape[1], ph, pw))
    for i, (feat, scale) in enumerate(zip(features, scales)):
        inds = torch.nonzero(level == i, as_tuple=True)[0]
        pooled = roi_align_fn(feat, rois[inds], (ph, pw), scale, sampling_ratio, aligned)
        out = out.index_put((inds,), pooled)
    return out


def multilevel_roi_align(
    features,
    rois: Tensor,
    output_size,
    scales,
    sampling_ratio: int,
    aligned: bool = True,
    canonical_box_size: float = 224,
    canonical_level: int = 4,
) -> Tensor:
    """Reference of :func:`idip.ops.multilevel_roi_align`: the per-level loop over
    :func:`roi_align` (this module's)."""
    return multilevel_roi_align_loop(
        roi_align,
        features,
        rois,
        output_size,
        scales,
        sampling_ratio,
        aligned,
        canonical_box_size,
        canonical_level,
    )


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Reference of :func:`idip.ops.nms`: torchvision's greedy scan, one kept box at a time.

    IoU is computed in the boxes' dtype and compared with the threshold in float64, as
    torchvision's CPU kernel does; equal scores are taken in index order (a stable sort).
    """
    if boxes.shape[0] == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    x1, y1, x2, y2 = boxes[order].unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    n = boxes.shape[0]
    suppressed = torch.zeros(n, dtype=torch.bool, device=boxes.device)
    keep = []
    for i in range(n):
        if bool(suppressed[i]):
            continue
        keep.append(i)
        w = (torch.minimum(x2[i], x2[i + 1 :]) - torch.maximum(x1[i], x1[i + 1 :])).clamp(min=0)
        h = (torch.minimum(y2[i], y2[i + 1 :]) - torch.maximum(y1[i], y1[i + 1 :])).clamp(min=0)
        inter = w * h
        iou = inter / (areas[i] + areas[i + 1 :] - inter)
        suppressed[i + 1 :] |= iou.double() > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long, device=boxes.device)]


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Reference of :func:`idip.ops.batched_nms`: :func:`nms` per class, then merged by
    decreasing score (equal scores in index order)."""
    keep_mask = torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    for c in torch.unique(idxs):
        members = torch.nonzero(idxs == c, as_tuple=True)[0]
        keep_mask[members[nms(boxes[members], scores[members], iou_threshold)]] = True
    keep = torch.nonzero(keep_mask, as_tuple=True)[0]
    return keep[torch.sort(scores[keep], descending=True, stable=True).indices]


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
    weights, biases = split_dynamic_mask_head_params(params, C, channels, num_layers, rel_coords)
    N = params.shape[0]
    in0 = C + 2 if rel_coords else C
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
    for layer in range(num_layers):
        _, fan_out, fan_in = weights[layer].shape
        weight = weights[layer].reshape(N * fan_out, fan_in, 1, 1)
        bias = biases[layer].reshape(N * fan_out)
        x = F.conv2d(x, weight, bias=bias, stride=1, padding=0, groups=N)
        if layer < num_layers - 1:
            x = F.relu(x)
    return x.reshape(N, 1, H, W)


# ================================================================================================
# Diffusion box scheduling (ops 6-7)
# ================================================================================================


def box_to_abs(x: Tensor, image_size: Tensor) -> Tensor:
    """to_abs of the op contract (docs/design.md): [B, N, 4] normalised cxcywh in [-1, 1] ->
    [B, N, 4] absolute xyxy.

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


def box_ddim_step(
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
    """Reference of :func:`idip.ops.box_ddim_step`: DiffusionDet's ddim_sample step with box
    renewal, one image at a time (boolean indexing, then concatenation of fresh boxes)."""
    sigma = (
        0.0
        if eta == 0
        else (eta * math.sqrt(1 - alpha / alpha_next) * math.sqrt((1 - alpha_next) / (1 - alpha)))
    )
    c = math.sqrt(max(1 - alpha_next - sigma**2, 0.0))
    n = x_t.shape[1]
    x_next = []
    for b in range(x_t.shape[0]):
        xyxy = pred_boxes[b] / image_size[b]
        cxcywh = torch.stack(
            [
                (xyxy[:, 0] + xyxy[:, 2]) / 2,
                (xyxy[:, 1] + xyxy[:, 3]) / 2,
                xyxy[:, 2] - xyxy[:, 0],
                xyxy[:, 3] - xyxy[:, 1],
            ],
            dim=-1,
        )
        x0 = cxcywh.clamp(0, 1) * 2 - 1
        eps = (x_t[b] - math.sqrt(alpha) * x0) / math.sqrt(1 - alpha)
        kb = keep[b]
        x_kept = math.sqrt(alpha_next) * x0[kb] + c * eps[kb] + sigma * noise[b][kb]
        x_next.append(torch.cat([x_kept, renew[b, : n - x_kept.shape[0]]], dim=0))
    x_next = torch.stack(x_next) if x_next else torch.empty_like(x_t)
    return x_next, box_to_abs(x_next, image_size)
