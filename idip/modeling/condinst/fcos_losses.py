"""FCOS losses: sigmoid focal loss, GIoU on (l, t, r, b) distances, centerness BCE."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn import functional as F

from ..losses import sigmoid_focal_loss
from .fcos_targets import FCOSTargets, centerness_targets


def ltrb_iou_giou(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """IoU and GIoU of boxes given as distances from a shared point.

    Both boxes contain the point, so the intersection is min(l)+min(r) by min(t)+min(b) and the
    enclosing box max(l)+max(r) by max(t)+max(b). As in FCOS, IoU is smoothed with +1 in the
    numerator and denominator (units of the targets, i.e. strides when they are normalised).

    Args:
        pred, target: [N, 4] non-negative (l, t, r, b).

    Returns:
        (iou, giou), each [N].
    """
    pred_area = (pred[:, 0] + pred[:, 2]) * (pred[:, 1] + pred[:, 3])
    target_area = (target[:, 0] + target[:, 2]) * (target[:, 1] + target[:, 3])
    inter_w = torch.minimum(pred[:, 0], target[:, 0]) + torch.minimum(pred[:, 2], target[:, 2])
    inter_h = torch.minimum(pred[:, 1], target[:, 1]) + torch.minimum(pred[:, 3], target[:, 3])
    enclose_w = torch.maximum(pred[:, 0], target[:, 0]) + torch.maximum(pred[:, 2], target[:, 2])
    enclose_h = torch.maximum(pred[:, 1], target[:, 1]) + torch.maximum(pred[:, 3], target[:, 3])
    enclose = enclose_w * enclose_h + 1e-7
    inter = inter_w * inter_h
    union = pred_area + target_area - inter
    iou = (inter + 1.0) / (union + 1.0)
    giou = iou - (enclose - union) / enclose
    return iou, giou


def _mean_over_ranks(value: Tensor) -> Tensor:
    """The scalar tensor averaged over the distributed ranks (itself when not distributed);
    stays on the device, so no host sync."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        total = value.detach().clone()
        dist.all_reduce(total)
        return total / dist.get_world_size()
    return value.detach()


def fcos_losses(
    logits: Tensor,
    box_reg: Tensor,
    ctrness: Tensor,
    targets: FCOSTargets,
    num_classes: int,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
) -> tuple[dict[str, Tensor], Tensor]:
    """FCOS losses of a batch, AdelaiDet's normalisation.

    The focal loss is summed over all locations and classes and divided by the number of
    positives (averaged over ranks, at least 1); the GIoU loss of the positives is weighted by
    their centerness targets and divided by the sum of those targets (averaged over ranks); the
    centerness BCE is divided by the number of positives.

    Args:
        logits: [B, M, K] class logits over all levels (targets' location order).
        box_reg: [B, M, 4] predicted (l, t, r, b), in the targets' units.
        ctrness: [B, M] centerness logits.
        targets: FCOSTargets for the same B, M.
        num_classes: K.

    Returns:
        (losses, pos_mask): ``loss_fcos_cls``, ``loss_fcos_loc``, ``loss_fcos_ctr`` and the
        [B, M] bool mask of positive locations.
    """
    # Losses in float32 even under autocast (GIoU and focal terms lose precision in half types).
    logits, box_reg, ctrness = logits.float(), box_reg.float(), ctrness.float()
    labels = targets.labels
    pos_mask = labels != num_classes
    # Computed densely over all locations, negatives weighted 0: no host sync and no
    # data-dependent shape (torch.compile keeps it in one graph), and every prediction stays in
    # the graph, so DDP sees a gradient for each parameter also without positives.
    pos = pos_mask.float()
    num_pos_avg = _mean_over_ranks(pos.sum()).clamp(min=1.0)

    class_target = F.one_hot(labels, num_classes + 1)[..., :num_classes].to(logits.dtype)
    loss_cls = sigmoid_focal_loss(logits, class_target, focal_alpha, focal_gamma) / num_pos_avg

    inside = pos_mask[..., None]
    ones = torch.ones_like(box_reg)
    reg_pred = torch.where(inside, box_reg, ones).reshape(-1, 4)
    reg_target = torch.where(inside, targets.reg_targets.to(box_reg.dtype), ones).reshape(-1, 4)
    ctr_target = centerness_targets(reg_target) * pos.reshape(-1)
    loss_denorm = _mean_over_ranks(ctr_target.sum()).clamp(min=1e-6)
    _, giou = ltrb_iou_giou(reg_pred, reg_target)
    loss_loc = ((1 - giou) * ctr_target).sum() / loss_denorm
    bce = F.binary_cross_entropy_with_logits(ctrness.reshape(-1), ctr_target, reduction="none")
    loss_ctr = (bce * pos.reshape(-1)).sum() / num_pos_avg
    return {
        "loss_fcos_cls": loss_cls,
        "loss_fcos_loc": loss_loc,
        "loss_fcos_ctr": loss_ctr,
    }, pos_mask
