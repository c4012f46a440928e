"""IDIP's training losses: focal classification, L1 and GIoU on normalised boxes, Dice on masks —
per stage with SimOTA matching, each divided by the number of matched instances, averaged over
stages."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from ..box_ops import elementwise_generalized_box_iou
from ..losses import linear_dice_loss, sigmoid_focal_loss
from ..op_library import op_library
from ..poolers import box_lists_to_rois
from .matcher import SimOTAMatcher

# Masks cropped at once when building Dice targets (bounds float memory to CHUNK x H x W).
_MASK_CHUNK = 32


def crop_and_resize_masks(
    masks: Tensor, gt_index: Tensor, boxes: Tensor, size: int, use_reference_ops: bool = False
) -> Tensor:
    """detectron2's BitMasks.crop_and_resize: RoIAlign (aligned, adaptive sampling) of each
    selected bitmask inside its box, thresholded at 0.5.

    Args:
        masks: [G, H, W] bool ground-truth masks of one image.
        gt_index: [K] int64, the mask of each box.
        boxes: [K, 4] absolute xyxy boxes.
        size: output side.
        use_reference_ops: crop with ``idip.ops.reference`` instead of the kernel.

    Returns:
        [K, size, size] float {0, 1} targets.
    """
    k = gt_index.shape[0]
    out = boxes.new_zeros((k, size, size), dtype=torch.float32)
    if k == 0:
        return out
    unique, inverse = torch.unique(gt_index, return_inverse=True)
    for start in range(0, unique.shape[0], _MASK_CHUNK):
        chunk = unique[start : start + _MASK_CHUNK]
        rows = ((inverse >= start) & (inverse < start + chunk.shape[0])).nonzero(as_tuple=True)[0]
        rois = torch.cat(
            [(inverse[rows] - start).to(torch.float32)[:, None], boxes[rows].float()], dim=1
        )
        crops = op_library(use_reference_ops).roi_align(
            masks[chunk][:, None].float(), rois, (size, size), 1.0, 0, True
        )
        out[rows] = (crops[:, 0] >= 0.5).float()
    return out


class IDIPCriterion(nn.Module):
    """Computes ``loss_cls``, ``loss_l1``, ``loss_giou``, ``loss_mask`` over the head's stages.

    Per stage and image, :class:`SimOTAMatcher` picks matched predictions; the focal loss covers
    every prediction of every image (unmatched ones, and all of an image without ground truth,
    are negatives), L1 and GIoU use boxes divided by (w, h, w, h), Dice compares 28x28 mask
    probabilities of the matched class with the GT mask cropped and resized to the predicted box.
    Each term is divided by the batch's number of matched predictions (at least 1), averaged over
    stages and multiplied by its weight.

    Args:
        matcher: the SimOTA matcher (its weights are the cost weights).
        cls_weight, l1_weight, giou_weight, mask_weight: loss weights (2, 5, 2, 5).
        focal_alpha, focal_gamma: focal loss parameters (0.25, 2).
        use_reference_ops: build mask targets with ``idip.ops.reference`` instead of the kernel.

    Non-finite values are not checked here (a host sync per check): the trainer stops on a
    non-finite loss.
    """

    def __init__(
        self,
        matcher: SimOTAMatcher,
        cls_weight: float = 2.0,
        l1_weight: float = 5.0,
        giou_weight: float = 2.0,
        mask_weight: float = 5.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        use_reference_ops: bool = False,
    ):
        super().__init__()
        self.matcher = matcher
        self.use_reference_ops = bool(use_reference_ops)
        self.weights = {
            "loss_cls": cls_weight,
            "loss_l1": l1_weight,
            "loss_giou": giou_weight,
            "loss_mask": mask_weight,
        }
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def forward(
        self,
        outputs: list[dict[str, Tensor]],
        targets: list[dict[str, Tensor]],
        image_size: Tensor,
        mask_logits_fn: Callable[[Tensor, Tensor], Tensor],
    ) -> dict[str, Tensor]:
        """Losses of all stages.

        Args:
            outputs: per stage, ``logits`` [B, N, C], ``boxes`` [B, N, 4] absolute xyxy,
                ``proposal_feat`` [B, N, D] (see :class:`IDIPHead`).
            targets: per image, ``boxes`` [G, 4] absolute xyxy, ``classes`` [G] int64,
                ``masks`` [G, H, W] bool.
            image_size: [B, 4] (w, h, w, h) of each (unpadded) image.
            mask_logits_fn: ``(rois [K, 5], proposal_feat [K, D]) -> [K, C, S, S]`` mask logits.

        Returns:
            dict of scalar losses.
        """
        totals = {name: None for name in self.weights}
        for stage, out in enumerate(outputs):
            for name, value in self._stage_losses(out, targets, image_size, mask_logits_fn).items():
                totals[name] = value if totals[name] is None else totals[name] + value
        num_stages = len(outputs)
        return {name: self.weights[name] * value / num_stages for name, value in totals.items()}

    def _stage_losses(self, out, targets, image_size, mask_logits_fn) -> dict[str, Tensor]:
        logits, boxes, feats = out["logits"], out["boxes"], out["proposal_feat"]
        b, n, c = logits.shape
        labels = torch.zeros_like(logits)
        pred_boxes, gt_boxes, sizes, dets, images, roi_feats, gt_classes, mask_targets = (
            [] for _ in range(8)
        )
        for i, target in enumerate(targets):
            fg_mask, matched = self.matcher(
                logits[i], boxes[i], target["classes"], target["boxes"], image_size[i]
            )
            if matched.numel() == 0:
                continue
            fg = fg_mask.nonzero(as_tuple=True)[0]
            cls = target["classes"][matched]
            labels[i, fg, cls] = 1.0
            pred = boxes[i, fg]
            pred_boxes.append(pred)
            gt_boxes.append(target["boxes"][matched].to(pred.dtype))
            sizes.append(image_size[i].expand(fg.shape[0], 4))
            det = pred.detach()
            dets.append(det)
            images.append(i)
            roi_feats.append(feats[i, fg])
            gt_classes.append(cls)
            mask_targets.append((target["masks"], matched, det))

        loss_cls = sigmoid_focal_loss(logits, labels, self.focal_alpha, self.focal_gamma)
        num_matched = sum(p.shape[0] for p in pred_boxes)
        if num_matched == 0:
            zero = (boxes.sum() + feats.sum()) * 0.0
            losses = {"loss_cls": loss_cls, "loss_l1": zero, "loss_giou": zero, "loss_mask": zero}
        else:
            size = torch.cat(sizes).to(boxes.dtype)
            pred = torch.cat(pred_boxes) / size
            gt = torch.cat(gt_boxes) / size
            loss_l1 = (pred - gt).abs().sum()
            loss_giou = (1 - elementwise_generalized_box_iou(pred, gt)).sum()
            mask_logits = mask_logits_fn(box_lists_to_rois(dets, images), torch.cat(roi_feats))
            cls = torch.cat(gt_classes)
            probs = mask_logits[torch.arange(num_matched, device=cls.device), cls].sigmoid()
            side = probs.shape[-1]
            target_masks = torch.cat(
                [
                    crop_and_resize_masks(m, idx, det, side, self.use_reference_ops)
                    for m, idx, det in mask_targets
                ]
            ).to(probs.dtype)
            loss_mask = linear_dice_loss(probs, target_masks)
            losses = {
                "loss_cls": loss_cls,
                "loss_l1": loss_l1,
                "loss_giou": loss_giou,
                "loss_mask": loss_mask,
            }
        normaliser = float(max(num_matched, 1))
        return {name: value / normaliser for name, value in losses.items()}
