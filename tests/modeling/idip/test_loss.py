"""IDIP losses: hand-computed focal/Dice values, the criterion's edge cases."""

from __future__ import annotations

import math

import pytest
import torch

from idip.modeling.idip.loss import IDIPCriterion, crop_and_resize_masks
from idip.modeling.idip.matcher import SimOTAMatcher
from idip.modeling.losses import linear_dice_loss, sigmoid_focal_loss


def test_focal_loss_hand_computed():
    logits = torch.tensor([[0.0, 2.0]])
    targets = torch.tensor([[1.0, 0.0]])
    p1, p2 = 0.5, 1 / (1 + math.exp(-2))
    expected = 0.25 * (-math.log(p1)) * (1 - p1) ** 2 + 0.75 * (-math.log(1 - p2)) * p2**2
    assert sigmoid_focal_loss(logits, targets).item() == pytest.approx(expected, rel=1e-5)


def test_dice_loss_hand_computed():
    p = torch.tensor([[[0.5, 1.0], [0.0, 0.0]]])
    t = torch.tensor([[[1.0, 1.0], [0.0, 1.0]]])
    # inter 1.5, |P| 1.5, |T| 3 -> 1 - 3 / 4.5
    assert linear_dice_loss(p, t).item() == pytest.approx(1 - 3 / 4.5, rel=1e-6)


def test_crop_and_resize_masks():
    masks = torch.zeros(2, 20, 20, dtype=torch.bool)
    masks[0, 0:10, 0:10] = True
    masks[1, 10:20, :] = True
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 20.0, 20.0], [0.0, 0.0, 10.0, 10.0]])
    out = crop_and_resize_masks(masks, torch.tensor([0, 1, 1]), boxes, 4)
    assert out.shape == (3, 4, 4)
    assert out[0].eq(1).all()  # the box is exactly the mask
    assert out[1, :2].eq(0).all() and out[1, 2:].eq(1).all()  # bottom half
    assert out[2].eq(0).all()  # mask 1 is empty in the top-left quarter


def _setup(b=2, n=6, c=3, g=(2, 0)):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(b, n, c, generator=gen, requires_grad=True)
    xy = torch.rand(b, n, 2, generator=gen) * 30
    boxes = torch.cat(
        [xy, xy + 10 + torch.rand(b, n, 2, generator=gen) * 20], dim=-1
    ).requires_grad_()
    feats = torch.randn(b, n, 8, generator=gen, requires_grad=True)
    targets = []
    for i in range(b):
        gb = boxes[i, : g[i]].detach() + 1.0
        m = torch.zeros(g[i], 64, 64, dtype=torch.bool)
        for j in range(g[i]):
            x1, y1, x2, y2 = gb[j].long().tolist()
            m[j, y1:y2, x1:x2] = True
        targets.append({"boxes": gb, "classes": torch.arange(g[i]) % c, "masks": m})
    size = torch.full((b, 4), 64.0)
    return [{"logits": logits, "boxes": boxes, "proposal_feat": feats}], targets, size


def _mask_fn(c):
    weight = torch.nn.Parameter(torch.ones(1))

    def fn(rois, feats):
        return (feats.sum(-1)[:, None, None, None] * weight).expand(-1, c, 28, 28)

    return fn


def test_criterion_names_finite_and_empty_image():
    outputs, targets, size = _setup()
    crit = IDIPCriterion(SimOTAMatcher())
    losses = crit(outputs, targets, size, _mask_fn(3))
    assert set(losses) == {"loss_cls", "loss_l1", "loss_giou", "loss_mask"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    sum(losses.values()).backward()
    assert outputs[0]["logits"].grad[1].abs().sum() > 0  # the image without GT still gets negatives


def test_criterion_batch_without_gt():
    outputs, targets, size = _setup(g=(0, 0))
    losses = IDIPCriterion(SimOTAMatcher())(outputs, targets, size, _mask_fn(3))
    assert losses["loss_l1"].item() == 0 and losses["loss_cls"].item() > 0
    sum(losses.values()).backward()


def test_criterion_more_gt_than_predictions():
    outputs, targets, size = _setup(n=3, g=(3, 3))
    # Add many more GT boxes than predictions.
    for t in targets:
        t["boxes"] = t["boxes"].repeat(4, 1)
        t["classes"] = t["classes"].repeat(4)
        t["masks"] = t["masks"].repeat(4, 1, 1)
    losses = IDIPCriterion(SimOTAMatcher())(outputs, targets, size, _mask_fn(3))
    assert all(torch.isfinite(v) for v in losses.values())


def test_criterion_passes_non_finite_on_to_the_trainer():
    # No host-syncing check per stage: a NaN logit gives a NaN loss, which the trainer stops on.
    outputs, targets, size = _setup()
    outputs[0]["logits"] = outputs[0]["logits"].detach().clone()
    outputs[0]["logits"][0, 0, 0] = float("nan")
    losses = IDIPCriterion(SimOTAMatcher())(outputs, targets, size, _mask_fn(3))
    assert not torch.isfinite(losses["loss_cls"])
