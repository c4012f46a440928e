"""FCOS (Tian et al., ICCV 2019) as CondInst uses it: head, training losses and inference."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from ...config import ConfigError
from .fcos_head import FCOSHead, compute_locations
from .fcos_losses import fcos_losses
from .fcos_targets import FCOSTargets, compute_fcos_targets


def flatten_levels(per_level: list[Tensor]) -> Tensor:
    """L tensors [B, C, H_l, W_l] -> [B, sum_l H_l*W_l, C] (level-major, then row-major)."""
    return torch.cat(
        [x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1]) for x in per_level], dim=1
    )


@dataclass
class FCOSOutputs:
    """Head outputs of a batch, flattened over levels (M locations per image).

    Attributes:
        logits: [B, M, K] class logits.
        box_reg: [B, M, 4] (l, t, r, b), in stride units when targets are normalised.
        ctrness: [B, M] centerness logits.
        top_feats: [B, M, P] controller outputs (dynamic mask-head parameters) or None.
        locations: [M, 2] (x, y) image coordinates of each location.
        levels: [M] int64 FPN level index of each location.
        strides: [M] float32 stride of each location's level.
        level_sizes: locations per level (H_l * W_l), known from the shapes without a host sync.
    """

    logits: Tensor
    box_reg: Tensor
    ctrness: Tensor
    top_feats: Tensor | None
    locations: Tensor
    levels: Tensor
    strides: Tensor
    level_sizes: list[int]


class FCOS(nn.Module):
    """FCOS over the FPN levels ``MODEL.FCOS.IN_FEATURES``, configured by ``MODEL.FCOS``."""

    def __init__(self, cfg, input_shape: dict[str, tuple[int, int]]):
        super().__init__()
        c = cfg.MODEL.FCOS
        self.in_features = list(c.IN_FEATURES)
        for name in self.in_features:
            if name not in input_shape:
                raise ConfigError(
                    f"config key 'MODEL.FCOS.IN_FEATURES' names {name!r}, which the backbone does not "
                    f"produce (it gives {sorted(input_shape)}); FCOS needs MODEL.FPN.TOP_BLOCK 'P6P7' for p6/p7"
                )
        self.strides = [int(s) for s in c.FPN_STRIDES]
        backbone_strides = [int(input_shape[f][1]) for f in self.in_features]
        if self.strides != backbone_strides:
            raise ConfigError(
                f"config key 'MODEL.FCOS.FPN_STRIDES' is {self.strides} but the backbone's "
                f"{self.in_features} have strides {backbone_strides}"
            )
        channels = {input_shape[f][0] for f in self.in_features}
        if len(channels) != 1:
            raise ValueError(
                f"FCOS needs equal channels on {self.in_features}, got {sorted(channels)}"
            )
        self.in_channels = channels.pop()
        self.num_classes = int(c.NUM_CLASSES)
        if self.num_classes < 1:
            raise ConfigError(
                f"config key 'MODEL.FCOS.NUM_CLASSES' must be >= 1, got {self.num_classes}"
            )
        self.sizes_of_interest = [float(s) for s in c.SIZES_OF_INTEREST]
        self.center_sample = bool(c.CENTER_SAMPLE)
        self.radius = float(c.POS_RADIUS)
        self.norm_reg_targets = bool(c.NORM_REG_TARGETS)
        self.focal_alpha = float(c.LOSS_ALPHA)
        self.focal_gamma = float(c.LOSS_GAMMA)
        self.score_thresh = float(c.INFERENCE_TH_TEST)
        self.thresh_with_ctr = bool(c.THRESH_WITH_CTR)
        self.pre_nms_topk = int(c.PRE_NMS_TOPK_TEST)
        self.post_nms_topk = int(c.POST_NMS_TOPK_TEST)
        self.nms_thresh = float(c.NMS_TH)
        self.ignore_padding_locations = bool(c.IGNORE_PADDING_LOCATIONS)
        self.head = FCOSHead(
            self.in_channels,
            self.num_classes,
            num_levels=len(self.in_features),
            num_cls_convs=int(c.NUM_CLS_CONVS),
            num_box_convs=int(c.NUM_BOX_CONVS),
            norm=c.NORM,
            prior_prob=float(c.PRIOR_PROB),
            use_scale=bool(c.USE_SCALE),
            centerness_on_reg=bool(c.CENTERNESS_ON_REG),
        )

    def forward(
        self, features: dict[str, Tensor], top_module: nn.Module | None = None
    ) -> FCOSOutputs:
        """Runs the head on the FPN features and flattens its outputs over levels."""
        feats = [features[f] for f in self.in_features]
        logits, box_reg, ctrness, top_feats = self.head(feats, top_module)
        device = feats[0].device
        locations, levels, strides = [], [], []
        for level, (feat, stride) in enumerate(zip(feats, self.strides)):
            loc = compute_locations(feat.shape[-2], feat.shape[-1], stride, device)
            locations.append(loc)
            levels.append(torch.full((loc.shape[0],), level, dtype=torch.long, device=device))
            strides.append(torch.full((loc.shape[0],), float(stride), device=device))
        return FCOSOutputs(
            logits=flatten_levels(logits),
            box_reg=flatten_levels(box_reg),
            ctrness=flatten_levels(ctrness)[..., 0],
            top_feats=flatten_levels(top_feats) if top_feats else None,
            locations=torch.cat(locations),
            levels=torch.cat(levels),
            strides=torch.cat(strides),
            level_sizes=[loc.shape[0] for loc in locations],
        )

    def targets(
        self,
        outputs: FCOSOutputs,
        gt_boxes: list[Tensor],
        gt_classes: list[Tensor],
        gt_centers: list[Tensor] | None = None,
    ) -> FCOSTargets:
        """Training targets for ``outputs``' locations (see ``compute_fcos_targets``)."""
        locations = list(torch.split(outputs.locations, outputs.level_sizes))
        return compute_fcos_targets(
            locations,
            self.strides,
            self.sizes_of_interest,
            gt_boxes,
            gt_classes,
            self.num_classes,
            center_sample=self.center_sample,
            radius=self.radius,
            norm_reg_targets=self.norm_reg_targets,
            gt_centers=gt_centers,
        )

    def losses(
        self, outputs: FCOSOutputs, targets: FCOSTargets
    ) -> tuple[dict[str, Tensor], Tensor]:
        """``loss_fcos_cls``, ``loss_fcos_loc``, ``loss_fcos_ctr`` and the [B, M] positive mask."""
        return fcos_losses(
            outputs.logits,
            outputs.box_reg,
            outputs.ctrness,
            targets,
            self.num_classes,
            self.focal_alpha,
            self.focal_gamma,
        )

    @torch.no_grad()
    def predict(
        self,
        outputs: FCOSOutputs,
        batched_nms: Callable[[Tensor, Tensor, Tensor, float], Tensor],
        image_sizes: list[tuple[int, int]] | None = None,
    ) -> list[dict[str, Tensor]]:
        """Detections per image, in the padded input's coordinates.

        With ``image_sizes`` ((h, w) of each unpadded image) and ``IGNORE_PADDING_LOCATIONS``,
        locations in the batch padding are no candidates (they are negatives in training, and
        how many there are depends on the other images of the batch).

        Per level: class probabilities above ``INFERENCE_TH_TEST`` (after multiplying by the
        centerness when ``THRESH_WITH_CTR``), scored sqrt(prob * centerness), at most
        ``PRE_NMS_TOPK_TEST`` per level; then class-aware NMS at ``NMS_TH`` over all levels and
        the ``POST_NMS_TOPK_TEST`` best.

        Returns:
            One dict per image: ``boxes`` [D, 4] xyxy, ``scores`` [D], ``labels`` [D] int64,
            ``locations`` [D, 2], ``levels`` [D] int64 and ``params`` [D, P] (controller outputs;
            [D, 0] without a controller).
        """
        # Decoding in float32 also under autocast: bfloat16 boxes are off by pixels, and scores
        # and boxes must share a dtype for NMS.
        probs = outputs.logits.float().sigmoid()
        ctr = outputs.ctrness.float().sigmoid()
        num_levels = len(self.strides)
        counts = outputs.level_sizes
        box_reg = outputs.box_reg.float()
        if self.norm_reg_targets:
            box_reg = box_reg * outputs.strides[None, :, None]
        results = []
        for i in range(probs.shape[0]):
            cand_boxes, cand_scores, cand_labels, cand_locs, cand_levels, cand_params = (
                [],
                [],
                [],
                [],
                [],
                [],
            )
            start = 0
            for level in range(num_levels):
                end = start + counts[level]
                level_probs = probs[i, start:end]
                level_ctr = ctr[i, start:end]
                if self.thresh_with_ctr:
                    level_probs = level_probs * level_ctr[:, None]
                candidates = level_probs > self.score_thresh
                if self.ignore_padding_locations and image_sizes is not None:
                    h, w = image_sizes[i]
                    level_locs = outputs.locations[start:end]
                    inside = (level_locs[:, 0] < w) & (level_locs[:, 1] < h)
                    candidates = candidates & inside[:, None]
                if not self.thresh_with_ctr:
                    level_probs = level_probs * level_ctr[:, None]
                scores = level_probs[candidates]
                loc_idx, cls_idx = candidates.nonzero(as_tuple=True)
                if scores.numel() > self.pre_nms_topk:
                    scores, top = scores.topk(self.pre_nms_topk, sorted=False)
                    loc_idx, cls_idx = loc_idx[top], cls_idx[top]
                loc_idx = loc_idx + start
                locs = outputs.locations[loc_idx]
                reg = box_reg[i, loc_idx]
                cand_boxes.append(torch.cat([locs - reg[:, :2], locs + reg[:, 2:]], dim=1))
                cand_scores.append(scores.sqrt())
                cand_labels.append(cls_idx)
                cand_locs.append(locs)
                cand_levels.append(outputs.levels[loc_idx])
                if outputs.top_feats is not None:
                    cand_params.append(outputs.top_feats[i, loc_idx])
                start = end
            boxes = torch.cat(cand_boxes)
            scores = torch.cat(cand_scores)
            labels = torch.cat(cand_labels)
            if outputs.top_feats is not None:
                params = torch.cat(cand_params)
            else:
                params = boxes.new_zeros((boxes.shape[0], 0))
            keep = batched_nms(boxes, scores, labels, self.nms_thresh)
            if self.post_nms_topk > 0:
                keep = keep[: self.post_nms_topk]
            results.append(
                {
                    "boxes": boxes[keep],
                    "scores": scores[keep],
                    "labels": labels[keep],
                    "locations": torch.cat(cand_locs)[keep],
                    "levels": torch.cat(cand_levels)[keep],
                    "params": params[keep],
                }
            )
        return results
