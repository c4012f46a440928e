"""Dynamic-parameter layout, Dice loss and GT bitmask sampling, against hand-made values."""

from __future__ import annotations

import pytest
import torch

from idip.modeling.condinst.dynamic_mask_head import (
    dice_loss,
    dynamic_param_counts,
    gt_bitmasks_at_stride,
    split_dynamic_params,
)


def test_param_count_is_169_for_condinst_defaults():
    weight_nums, bias_nums = dynamic_param_counts(in_channels=8, channels=8, num_layers=3)
    assert weight_nums == [80, 64, 8]
    assert bias_nums == [8, 8, 1]
    assert sum(weight_nums) + sum(bias_nums) == 169
    w, b = dynamic_param_counts(8, 8, 3, rel_coords=False)
    assert sum(w) + sum(b) == 169 - 16
    w, b = dynamic_param_counts(8, 16, 2)
    assert (w, b) == ([160, 16], [16, 1])


def test_split_follows_weights_first_then_biases_row_major():
    params = torch.arange(2 * 169, dtype=torch.float32).reshape(2, 169)
    weights, biases = split_dynamic_params(params, 8, 8, 3)
    assert [w.shape for w in weights] == [(2, 8, 10), (2, 8, 8), (2, 1, 8)]
    assert [b.shape for b in biases] == [(2, 8), (2, 8), (2, 1)]
    # Layer 0 weight [out=1, in=2] is element 1*10 + 2 of the first block.
    assert weights[0][0, 1, 2].item() == 12
    assert weights[1][0, 0, 0].item() == 80
    assert weights[2][1, 0, 7].item() == 169 + 80 + 64 + 7
    assert biases[0][0, 0].item() == 152
    assert biases[2][0, 0].item() == 168
    with pytest.raises(ValueError, match="169"):
        split_dynamic_params(torch.zeros(2, 168), 8, 8, 3)


def test_dice_loss_hand_values():
    scores = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0]])
    target = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    loss = dice_loss(scores, target)
    # Row 1: perfect -> 1 - 4/(4+eps). Row 2: 1 - 2*0.5/(1 + 1 + eps). Row 3: 1 - 0.
    expected = torch.tensor([1 - 4 / (4 + 1e-5), 1 - 1 / (2 + 1e-5), 1.0])
    torch.testing.assert_close(loss, expected)


def test_gt_bitmasks_take_the_cell_centre_pixels():
    mask = torch.zeros(1, 6, 7, dtype=torch.bool)
    mask[0, 2, 2] = True  # (y=2, x=2): the centre pixel of stride-4 cell (0, 0)
    mask[0, 5, 6] = True  # (y=5, x=6): not a centre pixel (centres are 2, 6, ...) in y
    mask[0, 2, 6] = True  # centre of cell (0, 1)
    out = gt_bitmasks_at_stride(mask, (8, 12), 4)
    assert out.shape == (1, 2, 3)
    assert out.dtype == torch.float32
    expected = torch.tensor([[[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]])
    torch.testing.assert_close(out, expected)
    out8 = gt_bitmasks_at_stride(mask, (8, 16), 8)  # centre pixel (4, 4) only
    assert out8.shape == (1, 1, 2) and out8.sum() == 0
    with pytest.raises(ValueError, match="multiple"):
        gt_bitmasks_at_stride(mask, (10, 12), 4)
