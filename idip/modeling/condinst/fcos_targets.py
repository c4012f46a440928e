"""FCOS training targets: which ground-truth box every location of every FPN level regresses."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

INF = 1e8


def size_ranges_from_sizes_of_interest(sizes_of_interest: list[float]) -> list[tuple[float, float]]:
    """[64, 128, 256, 512] -> [(-1, 64), (64, 128), (128, 256), (256, 512), (512, INF)].

    Level l is responsible for a location when the largest of its (l, t, r, b) distances to the
    box lies in range l (both ends inclusive).
    """
    ranges, low = [], -1.0
    for size in sizes_of_interest:
        ranges.append((low, float(size)))
        low = float(size)
    ranges.append((low, INF))
    return ranges


def centerness_targets(reg_targets: Tensor) -> Tensor:
    """sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)) for [N, 4] (l, t, r, b) -> [N]."""
    if reg_targets.numel() == 0:
        return reg_targets.new_zeros(reg_targets.shape[0])
    lr = reg_targets[:, [0, 2]]
    tb = reg_targets[:, [1, 3]]
    ratio = (lr.min(dim=1).values / lr.max(dim=1).values) * (
        tb.min(dim=1).values / tb.max(dim=1).values
    )
    return ratio.sqrt()


@dataclass
class FCOSTargets:
    """Targets of a batch; M = total number of locations over all levels of one image.

    Attributes:
        labels: [B, M] int64 class per location, ``num_classes`` for background.
        reg_targets: [B, M, 4] (l, t, r, b) to the assigned box, divided by the level's stride
            when the targets are normalised (rows of background locations are meaningless).
        gt_inds: [B, M] int64 index of the assigned box in the batch's concatenated ground
            truth (image 0's boxes first), -1 for background.
    """

    labels: Tensor
    reg_targets: Tensor
    gt_inds: Tensor


def compute_fcos_targets(
    locations: list[Tensor],
    strides: list[int],
    sizes_of_interest: list[float],
    gt_boxes: list[Tensor],
    gt_classes: list[Tensor],
    num_classes: int,
    center_sample: bool = True,
    radius: float = 1.5,
    norm_reg_targets: bool = True,
    gt_centers: list[Tensor] | None = None,
) -> FCOSTargets:
    """Assigns every location to at most one ground-truth box.

    A location is a candidate for a box when it lies inside the box (or, with center sampling,
    inside the box's centre region: a square of half-side ``stride * radius`` around the centre,
    clipped to the box) and the largest of its distances to the box sides lies in its level's
    size range. Among several candidate boxes the one with the smallest area wins.

    Args:
        locations: L tensors [M_l, 2] of (x, y) image coordinates (``compute_locations``).
        strides: L strides.
        sizes_of_interest: L-1 range limits (see ``size_ranges_from_sizes_of_interest``).
        gt_boxes: B tensors [G_i, 4] xyxy.
        gt_classes: B tensors [G_i] int64 in [0, num_classes).
        num_classes: number of foreground classes (the background label).
        center_sample: restrict positives to the centre region.
        radius: centre-region half-size in units of the level's stride.
        norm_reg_targets: divide the (l, t, r, b) targets by the level's stride.
        gt_centers: optional B tensors [G_i, 2] of centres (x, y) for the centre region (e.g. the
            masks' centres of mass); the box centres when None.

    Returns:
        FCOSTargets.
    """
    num_levels = len(locations)
    if not (len(strides) == num_levels and len(sizes_of_interest) == num_levels - 1):
        raise ValueError(
            f"FCOS targets need one stride per level and one size of interest fewer than levels; "
            f"got {num_levels} levels, strides {list(strides)}, sizes_of_interest {list(sizes_of_interest)}"
        )
    device = locations[0].device
    ranges = size_ranges_from_sizes_of_interest(sizes_of_interest)
    counts = [len(loc) for loc in locations]
    all_locations = torch.cat(locations, dim=0)
    size_low = torch.cat([torch.full((n,), r[0], device=device) for n, r in zip(counts, ranges)])
    size_high = torch.cat([torch.full((n,), r[1], device=device) for n, r in zip(counts, ranges)])
    loc_stride = torch.cat(
        [torch.full((n,), float(s), device=device) for n, s in zip(counts, strides)]
    )
    xs, ys = all_locations[:, 0], all_locations[:, 1]
    num_loc = all_locations.shape[0]

    labels_out, reg_out, inds_out = [], [], []
    offset = 0
    for i, (boxes, classes) in enumerate(zip(gt_boxes, gt_classes)):
        boxes = boxes.to(device=device, dtype=torch.float32)
        classes = classes.to(device)
        if boxes.numel() == 0:
            labels_out.append(torch.full((num_loc,), num_classes, dtype=torch.long, device=device))
            reg_out.append(all_locations.new_zeros((num_loc, 4)))
            inds_out.append(torch.full((num_loc,), -1, dtype=torch.long, device=device))
            continue
        # [M, G] distances from each location to each box's sides.
        left = xs[:, None] - boxes[None, :, 0]
        top = ys[:, None] - boxes[None, :, 1]
        right = boxes[None, :, 2] - xs[:, None]
        bottom = boxes[None, :, 3] - ys[:, None]
        reg = torch.stack([left, top, right, bottom], dim=2)

        if center_sample:
            if gt_centers is not None:
                cx, cy = gt_centers[i][:, 0].to(device), gt_centers[i][:, 1].to(device)
            else:
                cx = (boxes[:, 0] + boxes[:, 2]) * 0.5
                cy = (boxes[:, 1] + boxes[:, 3]) * 0.5
            half = loc_stride[:, None] * radius
            x0 = torch.maximum(cx[None] - half, boxes[None, :, 0])
            y0 = torch.maximum(cy[None] - half, boxes[None, :, 1])
            x1 = torch.minimum(cx[None] + half, boxes[None, :, 2])
            y1 = torch.minimum(cy[None] + half, boxes[None, :, 3])
            in_region = (
                torch.stack(
                    [xs[:, None] - x0, ys[:, None] - y0, x1 - xs[:, None], y1 - ys[:, None]], dim=2
                )
                .min(dim=2)
                .values
                > 0
            )
        else:
            in_region = reg.min(dim=2).values > 0

        max_reg = reg.max(dim=2).values
        in_level = (max_reg >= size_low[:, None]) & (max_reg <= size_high[:, None])

        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        loc_area = area[None].expand(num_loc, -1).clone()
        loc_area[~(in_region & in_level)] = INF
        min_area, assigned = loc_area.min(dim=1)

        labels = classes[assigned].clone()
        background = min_area == INF
        labels[background] = num_classes
        gt_inds = assigned + offset
        gt_inds[background] = -1
        reg = reg[torch.arange(num_loc, device=device), assigned]
        if norm_reg_targets:
            reg = reg / loc_stride[:, None]

        labels_out.append(labels)
        reg_out.append(reg)
        inds_out.append(gt_inds)
        offset += boxes.shape[0]

    return FCOSTargets(
        labels=torch.stack(labels_out),
        reg_targets=torch.stack(reg_out),
        gt_inds=torch.stack(inds_out),
    )
