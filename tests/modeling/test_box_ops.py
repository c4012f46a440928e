"""box_ops against torchvision.ops (oracle) and hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from idip.modeling import box_ops

tv_ops = pytest.importorskip("torchvision.ops")


def _random_boxes(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 100
    wh = torch.rand(n, 2, generator=g) * 50 + 1
    return torch.cat([xy, xy + wh], dim=1).double()


def test_conversions_round_trip_and_match_torchvision():
    boxes = _random_boxes(20, 0)
    cxcywh = box_ops.box_xyxy_to_cxcywh(boxes)
    torch.testing.assert_close(cxcywh, tv_ops.box_convert(boxes, "xyxy", "cxcywh"))
    torch.testing.assert_close(box_ops.box_cxcywh_to_xyxy(cxcywh), boxes)


def test_pairwise_iou_and_giou_match_torchvision():
    a, b = _random_boxes(13, 1), _random_boxes(7, 2)
    iou, _ = box_ops.pairwise_box_iou(a, b, eps=0)
    torch.testing.assert_close(iou, tv_ops.box_iou(a, b))
    torch.testing.assert_close(
        box_ops.pairwise_generalized_box_iou(a, b, eps=0), tv_ops.generalized_box_iou(a, b)
    )


def test_elementwise_giou_is_diagonal_of_pairwise():
    a, b = _random_boxes(9, 3), _random_boxes(9, 4)
    pair = box_ops.pairwise_generalized_box_iou(a, b)
    torch.testing.assert_close(box_ops.elementwise_generalized_box_iou(a, b), pair.diagonal())


def test_hand_computed_iou_and_giou():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0]])
    iou, _ = box_ops.pairwise_box_iou(a, b, eps=0)
    assert iou.item() == pytest.approx(1 / 7)
    # hull 9, union 7 -> giou = 1/7 - 2/9
    assert box_ops.pairwise_generalized_box_iou(a, b, eps=0).item() == pytest.approx(1 / 7 - 2 / 9)


def test_apply_box_deltas_hand_computed_and_clamped():
    boxes = torch.tensor([[10.0, 10.0, 30.0, 50.0]])  # cx 20 cy 30 w 20 h 40
    deltas = torch.tensor([[2.0, -2.0, math.log(2.0), 100.0]])
    out = box_ops.apply_box_deltas(deltas, boxes, (2.0, 2.0, 1.0, 1.0))
    # cx = 20 + 1*20 = 40, cy = 30 - 1*40 = -10, w = 40, h = 40 * 1000/16 (clamped)
    h = 40 * 1000 / 16
    torch.testing.assert_close(out, torch.tensor([[20.0, -10 - h / 2, 60.0, -10 + h / 2]]))


def test_bad_shape_names_argument():
    with pytest.raises(ValueError, match="boxes2"):
        box_ops.pairwise_box_iou(torch.zeros(3, 4), torch.zeros(3, 5))
