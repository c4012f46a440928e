"""Vectorised mask pasting against a per-box grid_sample oracle (detectron2's formulation)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from idip.modeling.mask_paste import paste_masks_in_image


def _oracle(masks, boxes, h, w):
    out = []
    for m, b in zip(masks, boxes):
        ys = torch.arange(h, dtype=torch.float64) + 0.5
        xs = torch.arange(w, dtype=torch.float64) + 0.5
        gy = (ys - b[1]) / (b[3] - b[1]) * 2 - 1
        gx = (xs - b[0]) / (b[2] - b[0]) * 2 - 1
        grid = torch.stack([gx[None, :].expand(h, w), gy[:, None].expand(h, w)], dim=-1)
        out.append(F.grid_sample(m[None, None].double(), grid[None], align_corners=False)[0, 0])
    return torch.stack(out)


def test_matches_grid_sample_oracle():
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(5, 28, 28, generator=g)
    boxes = torch.tensor(
        [
            [3.2, 4.1, 30.5, 22.7],
            [-5.0, -3.0, 10.0, 12.0],
            [20.0, 1.0, 47.0, 39.5],
            [0.0, 0.0, 48.0, 40.0],
            [10.0, 10.0, 10.5, 11.0],
        ]
    )
    soft = paste_masks_in_image(masks, boxes, 40, 48, threshold=-1)
    torch.testing.assert_close(soft.double(), _oracle(masks, boxes, 40, 48), atol=1e-5, rtol=1e-5)
    hard = paste_masks_in_image(masks, boxes, 40, 48)
    assert hard.dtype == torch.bool and hard.shape == (5, 40, 48)
    assert torch.equal(hard, soft >= 0.5)


def test_empty():
    out = paste_masks_in_image(torch.zeros(0, 28, 28), torch.zeros(0, 4), 10, 12)
    assert out.shape == (0, 10, 12) and out.dtype == torch.bool
