"""Resize/flip: output sizes, reproducible sampling, image/box/mask consistency."""

from __future__ import annotations

import random

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch

from idip.data.transforms import (
    GeometricTransform,
    ResizeFlipAugmentation,
    resized_shape,
    sample_short_edge,
)


def test_resized_shape_hand_computed():
    assert resized_shape(480, 640, 800, 1333) == (800, 1067)  # 640 * 800 / 480 = 1066.7
    assert resized_shape(100, 1000, 800, 1333) == (133, 1333)  # capped: scale 1.333
    assert resized_shape(300, 200, 100, 0) == (150, 100)
    with pytest.raises(ValueError, match="height"):
        resized_shape(0, 10, 5, 10)


def test_short_edge_sampling_and_its_errors():
    rng = random.Random(0)
    assert {sample_short_edge((10, 20, 30), "choice", rng) for _ in range(200)} == {10, 20, 30}
    values = {sample_short_edge((224, 228), "range", rng) for _ in range(300)}
    assert values == set(range(224, 229))
    with pytest.raises(ValueError, match="MIN_SIZE_TRAIN_SAMPLING"):
        sample_short_edge((1, 2), "uniform", rng)
    with pytest.raises(ValueError, match="MIN_SIZE_TRAIN"):
        sample_short_edge((1, 2, 3), "range", rng)


def test_sampling_is_reproducible_from_the_rng():
    aug = ResizeFlipAugmentation((200, 300), "range", 1000, 0.5)
    first = [aug.sample(240, 320, random.Random(seed)) for seed in range(20)]
    again = [aug.sample(240, 320, random.Random(seed)) for seed in range(20)]
    assert first == again
    assert {t.hflip for t in first} == {True, False}


def _disk(h: int, w: int, cx: float, cy: float, r: float) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    return (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r


@pytest.mark.parametrize("out_size", [(400, 480), (170, 204)])
def test_mask_round_trip_resize_flip_rle_within_one_pixel(out_size):
    h, w, cx, cy, r = 250, 300, 140.7, 100.3, 40.0
    transform = GeometricTransform(h, w, out_size[0], out_size[1], hflip=True)
    out = transform.apply_masks(torch.from_numpy(_disk(h, w, cx, cy, r))[None])[0].numpy()
    rle = mask_util.encode(np.asfortranarray(out.astype(np.uint8)))
    decoded = mask_util.decode(rle).astype(bool)

    s = out_size[1] / w
    ecx, ecy, er = out_size[1] - cx * s, cy * s, r * s  # the disk, scaled and mirrored by hand
    ys, xs = np.mgrid[0 : out_size[0], 0 : out_size[1]] + 0.5
    distance_to_border = np.abs(np.hypot(xs - ecx, ys - ecy) - er)
    wrong = decoded != _disk(out_size[0], out_size[1], ecx, ecy, er)
    assert decoded.shape == out_size
    assert wrong.sum() < 0.1 * decoded.sum()
    assert distance_to_border[wrong].max(initial=0) <= 1.0

    box = transform.apply_boxes(torch.tensor([[cx - r, cy - r, cx + r, cy + r]]))[0]
    expected_box = torch.tensor([ecx - er, ecy - er, ecx + er, ecy + er])
    assert torch.allclose(box, expected_box, atol=1e-3)
    ys_m, xs_m = np.nonzero(decoded)
    mask_box = torch.tensor(
        [xs_m.min(), ys_m.min(), xs_m.max() + 1, ys_m.max() + 1], dtype=torch.float32
    )
    assert (mask_box - box).abs().max() <= 1.0


def test_flip_moves_pixels_boxes_and_masks_together():
    h, w = 5, 7
    image = np.zeros((h, w, 3), dtype=np.uint8)
    image[1, 2] = (255, 10, 20)
    mask = torch.zeros(1, h, w, dtype=torch.bool)
    mask[0, 1, 2] = True
    transform = GeometricTransform(h, w, h, w, hflip=True)
    flipped = transform.apply_image(image)
    assert tuple(flipped[1, w - 1 - 2]) == (255, 10, 20) and flipped.sum() == 285
    assert transform.apply_masks(mask)[0].nonzero().tolist() == [[1, w - 1 - 2]]
    box = transform.apply_boxes(torch.tensor([[2.0, 1.0, 3.0, 2.0]]))  # the pixel's box
    assert box.tolist() == [[w - 3.0, 1.0, w - 2.0, 2.0]]


def test_resize_keeps_image_content_in_place():
    image = np.zeros((40, 60, 3), dtype=np.uint8)
    image[10:20, 30:50] = 200
    transform = GeometricTransform(40, 60, 80, 120)
    out = transform.apply_image(image)
    assert out.shape == (80, 120, 3)
    assert (out[22:38, 62:98] == 200).all() and (out[:18] == 0).all() and (out[:, :58] == 0).all()
    assert transform.apply_masks(torch.zeros(0, 40, 60, dtype=torch.bool)).shape == (0, 80, 120)


@pytest.mark.parametrize("sizes", [(250, 300, 400, 480), (250, 300, 170, 204), (17, 23, 31, 9)])
@pytest.mark.parametrize("hflip", [False, True])
def test_mask_resize_equals_torch_nearest_exact(sizes, hflip):
    h, w, oh, ow = sizes
    masks = torch.rand(3, h, w, generator=torch.Generator().manual_seed(0)) > 0.5
    out = GeometricTransform(h, w, oh, ow, hflip).apply_masks(masks)
    expected = (
        torch.nn.functional.interpolate(
            masks[:, None].float(), size=(oh, ow), mode="nearest-exact"
        )[:, 0]
        > 0.5
    )
    if hflip:
        expected = expected.flip(-1)
    assert out.dtype == torch.bool and torch.equal(out, expected)
