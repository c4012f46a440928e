"""batch_images: padding, divisibility, sizes, errors."""

from __future__ import annotations

import pytest
import torch

from idip.modeling.image_batching import batch_images


def test_pads_bottom_right_to_a_multiple():
    a = torch.full((3, 30, 40), 1.0)
    b = torch.full((3, 50, 20), 2.0)
    batch, sizes = batch_images([a, b], 32, pad_value=-1.0)
    assert batch.shape == (2, 3, 64, 64)
    assert sizes == [(30, 40), (50, 20)]
    assert (
        (batch[0, :, :30, :40] == 1).all()
        and (batch[0, :, 30:] == -1).all()
        and (batch[0, :, :, 40:] == -1).all()
    )
    assert (
        (batch[1, :, :50, :20] == 2).all()
        and (batch[1, :, 50:] == -1).all()
        and (batch[1, :, :, 20:] == -1).all()
    )


@pytest.mark.parametrize("divisibility", [0, 1])
def test_no_rounding_without_divisibility(divisibility):
    images = [torch.zeros(1, 5, 7, dtype=torch.uint8), torch.ones(1, 6, 3, dtype=torch.uint8)]
    batch, sizes = batch_images(images, divisibility)
    assert batch.shape == (2, 1, 6, 7) and batch.dtype == torch.uint8
    assert batch[1].sum() == 18 and sizes == [(5, 7), (6, 3)]


def test_exact_multiple_is_not_padded_further():
    batch, _ = batch_images([torch.zeros(3, 64, 32)], 32)
    assert batch.shape == (1, 3, 64, 32)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="images"):
        batch_images([], 32)
    with pytest.raises(ValueError, match=r"images\[1\]"):
        batch_images([torch.zeros(3, 4, 4), torch.zeros(1, 4, 4)], 32)
    with pytest.raises(ValueError, match=r"images\[0\]"):
        batch_images([torch.zeros(4, 4)], 32)
    with pytest.raises(ValueError, match="size_divisibility"):
        batch_images([torch.zeros(3, 4, 4)], -1)
