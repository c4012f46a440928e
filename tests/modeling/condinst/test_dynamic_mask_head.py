"""The dynamic mask head's parameter count, Dice loss and GT bitmask sampling, against hand-made
values."""

from __future__ import annotations

import pytest
import torch

from idip.config import ConfigError
from idip.modeling.condinst.dynamic_mask_head import DynamicMaskHead, gt_bitmasks_at_stride
from idip.modeling.losses import squared_dice_loss


def test_head_predicts_169_parameters_and_rejects_no_layers():
    # The layout itself is idip.ops.dynamic_mask_head_param_counts (tests/ops).
    assert DynamicMaskHead(False, 8, 8, 3, [64, 128, 256, 512, 1024]).num_gen_params == 169
    with pytest.raises(ConfigError, match="MODEL.CONDINST.MASK_HEAD.NUM_LAYERS"):
        DynamicMaskHead(False, 8, 8, 0, [64, 128, 256, 512, 1024])


def test_dice_loss_hand_values():
    scores = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0]])
    target = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    loss = squared_dice_loss(scores, target)
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
