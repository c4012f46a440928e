"""SimOTA matcher on hand-made cases."""

from __future__ import annotations

import time

import torch

from idip.modeling.idip.matcher import SimOTAMatcher

SIZE = torch.tensor([100.0, 100.0, 100.0, 100.0])


def _logits(n, c=2, value=0.0):
    return torch.full((n, c), value)


def test_exact_prediction_gets_its_gt():
    gt = torch.tensor([[10.0, 10.0, 40.0, 40.0], [60.0, 60.0, 90.0, 95.0]])
    boxes = torch.tensor([[60.0, 60.0, 90.0, 95.0], [0.0, 0.0, 5.0, 5.0], [10.0, 10.0, 40.0, 40.0]])
    fg, matched = SimOTAMatcher()(_logits(3), boxes, torch.tensor([0, 1]), gt, SIZE)
    assert fg.tolist() == [True, False, True]
    assert matched.tolist() == [1, 0]


def test_dynamic_k_counts_top_ious():
    gt = torch.tensor([[20.0, 20.0, 80.0, 80.0]])
    # Four near-perfect predictions (IoU ~ 0.9+): sum of IoUs ~ 3.7 -> k = 3.
    boxes = torch.tensor(
        [
            [20.0, 20.0, 80.0, 80.0],
            [21.0, 21.0, 80.0, 80.0],
            [20.0, 20.0, 79.0, 78.0],
            [22.0, 22.0, 78.0, 80.0],
            [45.0, 45.0, 55.0, 55.0],
        ]
    )
    fg, matched = SimOTAMatcher()(_logits(5), boxes, torch.tensor([0]), gt, SIZE)
    ious = torch.tensor([1.0, (59 * 59) / 3600, (59 * 58) / 3600, (56 * 58) / 3600, 100 / 3600])
    k = int(ious.sum())
    assert k == 3
    assert int(fg.sum()) == 3
    assert fg[:3].all()  # the three cheapest (most accurate)
    assert matched.tolist() == [0, 0, 0]


def test_conflict_keeps_cheapest_gt():
    # One prediction, two GTs that both want it (k >= 1 each): it keeps the cheaper (the better box).
    gt = torch.tensor([[10.0, 10.0, 50.0, 50.0], [12.0, 12.0, 52.0, 52.0]])
    boxes = torch.tensor([[12.0, 12.0, 52.0, 52.0]])
    fg, matched = SimOTAMatcher()(_logits(1), boxes, torch.tensor([0, 0]), gt, SIZE)
    assert fg.tolist() == [True] and matched.tolist() == [1]


def test_class_cost_breaks_ties():
    gt = torch.tensor([[10.0, 10.0, 50.0, 50.0], [10.0, 10.0, 50.0, 50.0]])
    boxes = torch.tensor([[10.0, 10.0, 50.0, 50.0]])
    logits = torch.tensor([[-5.0, 5.0]])  # confident class 1
    fg, matched = SimOTAMatcher()(logits, boxes, torch.tensor([0, 1]), gt, SIZE)
    assert matched.tolist() == [1]


def test_no_gt_and_no_candidate():
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [3.0, 3.0, 4.0, 4.0]])
    fg, matched = SimOTAMatcher()(
        _logits(2), boxes, torch.zeros(0, dtype=torch.long), torch.zeros(0, 4), SIZE
    )
    assert not fg.any() and matched.numel() == 0
    # GT far from every prediction centre: all predictions compete, one is still matched.
    gt = torch.tensor([[80.0, 80.0, 90.0, 90.0]])
    fg, matched = SimOTAMatcher()(_logits(2), boxes, torch.tensor([0]), gt, SIZE)
    assert int(fg.sum()) == 1 and matched.tolist() == [0]


def test_more_gt_than_predictions_each_prediction_one_gt():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=g) * 80
    gt = torch.cat([xy, xy + 10], dim=1)
    boxes = gt[:5] + 0.5
    fg, matched = SimOTAMatcher()(_logits(5), boxes, torch.zeros(50, dtype=torch.long), gt, SIZE)
    assert fg.all() and matched.shape == (5,)


def test_ten_thousand_gt_is_fast_and_linear_in_memory():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(10000, 2, generator=g) * 900
    gt = torch.cat([xy, xy + 5 + torch.rand(10000, 2, generator=g) * 50], dim=1)
    boxes = gt[torch.randperm(10000, generator=g)[:300]] + 1.0
    size = torch.tensor([1000.0, 1000.0, 1000.0, 1000.0])
    start = time.perf_counter()
    fg, matched = SimOTAMatcher()(
        _logits(300, 80), boxes, torch.randint(0, 80, (10000,), generator=g), gt, size
    )
    assert time.perf_counter() - start < 20
    assert fg.sum() == matched.numel() and 0 < matched.numel() <= 300
    assert int(matched.max()) < 10000
