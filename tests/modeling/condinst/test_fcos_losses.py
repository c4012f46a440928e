"""FCOS losses and head against hand values and torchvision's focal loss / GIoU as oracles."""

from __future__ import annotations

import math

import pytest
import torch

from idip.modeling.condinst.fcos_head import FCOSHead
from idip.modeling.condinst.fcos_losses import fcos_losses, ltrb_iou_giou
from idip.modeling.condinst.fcos_targets import FCOSTargets
from idip.modeling.losses import sigmoid_focal_loss


def test_ltrb_iou_giou_hand_values():
    pred = torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0], [1.0, 1.0, 1.0, 1.0]])
    target = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 2.0, 1.0]])
    iou, giou = ltrb_iou_giou(pred, target)
    # Row 2: 4x4 around 2x2 -> inter 4, union 16, enclosure 16. Row 3: pred [-1,1]x[-1,1],
    # target [0,2]x[-1,1] -> inter 2, union 6, enclosure 3x2 = 6.
    torch.testing.assert_close(iou, torch.tensor([1.0, 5 / 17, 3 / 7]))
    torch.testing.assert_close(giou, torch.tensor([1.0, 5 / 17, 3 / 7]), atol=1e-6, rtol=0)


def test_giou_matches_torchvision_for_large_boxes():
    tv = pytest.importorskip("torchvision")
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(50, 4, generator=g, dtype=torch.float64) * 1000 + 1
    target = torch.rand(50, 4, generator=g, dtype=torch.float64) * 1000 + 1

    def xyxy(d):
        return torch.stack([-d[:, 0], -d[:, 1], d[:, 2], d[:, 3]], dim=1)

    expected = tv.ops.generalized_box_iou(xyxy(pred), xyxy(target)).diagonal()
    _, giou = ltrb_iou_giou(pred, target)
    # The +1 IoU smoothing is negligible at this scale.
    torch.testing.assert_close(giou, expected, atol=1e-5, rtol=0)


def test_focal_loss_matches_torchvision():
    tv = pytest.importorskip("torchvision")
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(30, 5, generator=g)
    targets = (torch.rand(30, 5, generator=g) > 0.8).float()
    expected = tv.ops.sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0, reduction="sum")
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets, 0.25, 2.0), expected)


def test_fcos_losses_normalisation():
    # One image, 3 locations, 2 classes: location 1 positive (class 1), others background.
    logits = torch.tensor([[[0.0, 0.0], [0.5, -0.5], [1.0, 2.0]]])
    box_reg = torch.tensor([[[1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0], [0.0, 0.0, 0.0, 0.0]]])
    ctr = torch.tensor([[0.0, 0.3, 0.0]])
    targets = FCOSTargets(
        labels=torch.tensor([[2, 1, 2]]),
        reg_targets=torch.tensor([[[0.0] * 4, [1.0, 1.0, 3.0, 1.0], [0.0] * 4]]),
        gt_inds=torch.tensor([[-1, 0, -1]]),
    )
    losses, pos = fcos_losses(logits, box_reg, ctr, targets, num_classes=2)
    assert pos.tolist() == [[False, True, False]]
    onehot = torch.tensor([[0.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    torch.testing.assert_close(losses["loss_fcos_cls"], sigmoid_focal_loss(logits[0], onehot))
    ctr_t = math.sqrt(1 / 3)
    # pred 4x4 box [-2,2]^2 vs target [-1,3]x[-1,1]: inter 3*2=6, union 16+8-6=18, enclosure 5x4.
    iou = 7 / 19
    giou = iou - (20 - 18) / 20
    # Weighted by the centerness target and divided by its sum -> just 1 - giou.
    torch.testing.assert_close(losses["loss_fcos_loc"], torch.tensor(1 - giou))
    bce = -(
        ctr_t * math.log(torch.sigmoid(torch.tensor(0.3)).item())
        + (1 - ctr_t) * math.log(1 - torch.sigmoid(torch.tensor(0.3)).item())
    )
    torch.testing.assert_close(losses["loss_fcos_ctr"], torch.tensor(bce), rtol=1e-5, atol=1e-6)


def test_fcos_losses_without_positives_are_finite_and_differentiable():
    logits = torch.randn(2, 4, 3, requires_grad=True)
    box_reg = torch.rand(2, 4, 4, requires_grad=True)
    ctr = torch.randn(2, 4, requires_grad=True)
    targets = FCOSTargets(
        labels=torch.full((2, 4), 3),
        reg_targets=torch.zeros(2, 4, 4),
        gt_inds=torch.full((2, 4), -1),
    )
    losses, pos = fcos_losses(logits, box_reg, ctr, targets, num_classes=3)
    assert not pos.any()
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert box_reg.grad is not None and ctr.grad is not None


def test_fcos_head_shapes_prior_and_controller_hook():
    head = FCOSHead(in_channels=32, num_classes=4, num_levels=2, num_cls_convs=2, num_box_convs=2)
    controller = torch.nn.Conv2d(32, 169, 3, padding=1)
    feats = [torch.randn(2, 32, 8, 10), torch.randn(2, 32, 4, 5)]
    logits, reg, ctr, top = head(feats, controller)
    assert [x.shape for x in logits] == [(2, 4, 8, 10), (2, 4, 4, 5)]
    assert [x.shape for x in reg] == [(2, 4, 8, 10), (2, 4, 4, 5)]
    assert [x.shape for x in ctr] == [(2, 1, 8, 10), (2, 1, 4, 5)]
    assert [x.shape for x in top] == [(2, 169, 8, 10), (2, 169, 4, 5)]
    assert all((r >= 0).all() for r in reg)
    # Initial class probability ~ prior 0.01 (weights std 0.01 keep the logits near the bias).
    p = torch.sigmoid(logits[0]).mean().item()
    assert abs(p - 0.01) < 0.005
    _, _, _, top = head(feats)
    assert top == []
