"""SimOTA label assignment between one image's predictions and its ground truth (YOLOX, as used
by DiffusionDet and IDIP), vectorised: memory is O(N x G), never O(G x G), and there is no loop
over ground-truth boxes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..box_ops import box_xyxy_to_cxcywh, pairwise_box_iou, pairwise_generalized_box_iou

# Cost added to pairs whose prediction centre is not both inside the box and near its centre.
NON_CANDIDATE_COST = 1e5


@dataclass
class SimOTAMatcher:
    """SimOTA with a DETR-style cost.

    Candidates: predictions whose centre lies inside some GT box or within ``center_radius`` x
    (the prediction's own width, height) of some GT centre. Cost per (candidate, GT):
    ``cls_weight * focal_cost + l1_weight * L1(normalised xyxy) + giou_weight * (1 - GIoU)
    + 1e5`` unless the centre is both inside the GT box and near its centre. Each GT takes its
    ``k = max(1, int(sum of its top-``candidate_topk`` IoUs))`` cheapest candidates; a prediction
    claimed by several GTs keeps the cheapest GT.
    """

    cls_weight: float = 2.0
    l1_weight: float = 5.0
    giou_weight: float = 2.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    center_radius: float = 2.5
    candidate_topk: int = 10

    @torch.no_grad()
    def __call__(
        self,
        logits: Tensor,
        boxes: Tensor,
        gt_classes: Tensor,
        gt_boxes: Tensor,
        image_size: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Matches one image.

        Args:
            logits: [N, C] class logits.
            boxes: [N, 4] predicted absolute xyxy boxes.
            gt_classes: [G] int64 classes.
            gt_boxes: [G, 4] absolute xyxy boxes.
            image_size: [4] (w, h, w, h) used to normalise boxes for the L1 and GIoU costs.

        Returns:
            fg_mask: [N] bool, the matched predictions.
            matched_gt: [fg_mask.sum()] int64, the GT index of each matched prediction (in order).
        """
        n = boxes.shape[0]
        g = gt_boxes.shape[0]
        device = boxes.device
        if g == 0 or n == 0:
            return torch.zeros(n, dtype=torch.bool, device=device), torch.zeros(
                0, dtype=torch.long, device=device
            )
        boxes = boxes.float()
        gt_boxes = gt_boxes.float()
        image_size = image_size.float()

        in_box_and_center, candidate = self._candidates(boxes, gt_boxes)
        if not bool(candidate.any()):
            # No prediction near any GT: every prediction competes, without the centre prior.
            candidate = torch.ones(n, dtype=torch.bool, device=device)
            in_box_and_center = torch.ones(n, g, dtype=torch.bool, device=device)
        else:
            in_box_and_center = in_box_and_center[candidate]
        cand_logits = logits[candidate].float()
        cand_boxes = boxes[candidate]

        prob = cand_logits.sigmoid()[:, gt_classes]  # [K, G]
        neg = -(1 - prob + 1e-8).log() * (1 - self.focal_alpha) * prob.pow(self.focal_gamma)
        pos = -(prob + 1e-8).log() * self.focal_alpha * (1 - prob).pow(self.focal_gamma)
        norm_boxes = cand_boxes / image_size
        norm_gt = gt_boxes / image_size
        cost = self.cls_weight * (pos - neg)
        cost += self.l1_weight * torch.cdist(norm_boxes, norm_gt, p=1)
        cost += self.giou_weight * (1 - pairwise_generalized_box_iou(norm_boxes, norm_gt))
        cost += (~in_box_and_center).float() * NON_CANDIDATE_COST
        ious = pairwise_box_iou(cand_boxes, gt_boxes, eps=1e-8)[0]

        matched = self._dynamic_k(cost, ious)  # [K] GT index or -1
        fg_cand = matched >= 0
        fg_mask = torch.zeros(n, dtype=torch.bool, device=device)
        fg_mask[candidate.nonzero(as_tuple=True)[0][fg_cand]] = True
        return fg_mask, matched[fg_cand]

    def _candidates(self, boxes: Tensor, gt_boxes: Tensor) -> tuple[Tensor, Tensor]:
        """([N, G] centre in box and near centre, [N] centre in any box or near any centre)."""
        cxcywh = box_xyxy_to_cxcywh(boxes)
        px, py = cxcywh[:, 0:1], cxcywh[:, 1:2]  # [N, 1]
        pw, ph = cxcywh[:, 2:3], cxcywh[:, 3:4]
        gx1, gy1, gx2, gy2 = (
            gt_boxes[None, :, 0],
            gt_boxes[None, :, 1],
            gt_boxes[None, :, 2],
            gt_boxes[None, :, 3],
        )
        in_box = (px > gx1) & (px < gx2) & (py > gy1) & (py < gy2)
        gcx, gcy = (gx1 + gx2) / 2, (gy1 + gy2) / 2
        rx, ry = self.center_radius * pw, self.center_radius * ph
        in_center = (px > gcx - rx) & (px < gcx + rx) & (py > gcy - ry) & (py < gcy + ry)
        candidate = in_box.any(dim=1) | in_center.any(dim=1)
        return in_box & in_center, candidate

    def _dynamic_k(self, cost: Tensor, ious: Tensor) -> Tensor:
        """[K, G] cost and IoU -> [K] matched GT index per prediction (-1: background)."""
        k_pred, g = cost.shape
        topk = min(self.candidate_topk, k_pred)
        top_ious = ious.topk(topk, dim=0).values  # [topk, G]
        dynamic_k = top_ious.sum(dim=0).int().clamp(min=1, max=k_pred)  # [G]
        kmax = int(dynamic_k.max())
        order = cost.topk(kmax, dim=0, largest=False).indices  # [kmax, G]
        take = torch.arange(kmax, device=cost.device)[:, None] < dynamic_k[None, :]
        matching = torch.zeros(k_pred, g, dtype=torch.bool, device=cost.device)
        gt_index = torch.arange(g, device=cost.device).expand(kmax, g)
        matching[order[take], gt_index[take]] = True
        num_claims = matching.sum(dim=1)
        masked_cost = torch.where(matching, cost, torch.full_like(cost, float("inf")))
        matched = masked_cost.argmin(dim=1)
        # A prediction claimed by several GTs keeps the GT of lowest cost over all GTs (YOLOX).
        multi = num_claims > 1
        if bool(multi.any()):
            matched[multi] = cost[multi].argmin(dim=1)
        return torch.where(num_claims > 0, matched, torch.full_like(matched, -1))
