"""FCOS target assignment on hand-made boxes; expected positives are worked out by hand."""

from __future__ import annotations

import pytest
import torch

from idip.modeling.condinst.fcos_head import compute_locations
from idip.modeling.condinst.fcos_targets import (
    INF,
    centerness_targets,
    compute_fcos_targets,
    size_ranges_from_sizes_of_interest,
)

STRIDES = [8, 16, 32, 64, 128]
SOI = [64, 128, 256, 512]
IMAGE = 512  # square padded image; level l has IMAGE / stride cells per side
NUM_CLASSES = 3


def _locations():
    return [compute_locations(IMAGE // s, IMAGE // s, s, torch.device("cpu")) for s in STRIDES]


def _level_offsets():
    counts = [(IMAGE // s) ** 2 for s in STRIDES]
    offsets = [0]
    for c in counts:
        offsets.append(offsets[-1] + c)
    return offsets


def _positives(targets, image=0):
    """{level: set of (x, y) positive locations}."""
    locs = torch.cat(_locations())
    offsets = _level_offsets()
    out = {}
    for idx in (targets.labels[image] != NUM_CLASSES).nonzero().squeeze(1).tolist():
        level = max(lv for lv in range(len(STRIDES)) if offsets[lv] <= idx)
        out.setdefault(level, set()).add(tuple(int(v) for v in locs[idx].tolist()))
    return out


def _targets(boxes, classes, **kw):
    return compute_fcos_targets(_locations(), STRIDES, SOI, boxes, classes, NUM_CLASSES, **kw)


def test_compute_locations_cell_centres():
    loc = compute_locations(2, 3, 8, torch.device("cpu"))
    expected = torch.tensor(
        [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]], dtype=torch.float32
    )
    torch.testing.assert_close(loc, expected)


def test_size_ranges():
    assert size_ranges_from_sizes_of_interest([64, 128, 256, 512]) == [
        (-1.0, 64.0),
        (64.0, 128.0),
        (128.0, 256.0),
        (256.0, 512.0),
        (512.0, INF),
    ]


def test_small_box_goes_to_p3_with_centre_sampling():
    # 40x40 box centred at (116, 116). P3 centre region: 116 +- 1.5*8 = [104, 128] -> cell centres
    # 108, 116, 124 on both axes (9 locations), max distance <= 28 <= 64. On P4 the candidates
    # (104, 120) have max distance <= 32, outside (64, 128]: no positives there.
    t = _targets([torch.tensor([[96.0, 96.0, 136.0, 136.0]])], [torch.tensor([2])])
    pos = _positives(t)
    assert set(pos) == {0}
    assert pos[0] == {(x, y) for x in (108, 116, 124) for y in (108, 116, 124)}
    assert set(t.labels[0][t.labels[0] != NUM_CLASSES].tolist()) == {2}
    assert set(t.gt_inds[0][t.labels[0] != NUM_CLASSES].tolist()) == {0}
    assert (t.gt_inds[0][t.labels[0] == NUM_CLASSES] == -1).all()


def test_small_box_without_centre_sampling_takes_every_inside_location():
    # Cell centres strictly inside (96, 136): 100, 108, 116, 124, 132 -> 25 on P3.
    t = _targets(
        [torch.tensor([[96.0, 96.0, 136.0, 136.0]])], [torch.tensor([0])], center_sample=False
    )
    pos = _positives(t)
    assert set(pos) == {0}
    assert pos[0] == {(x, y) for x in (100, 108, 116, 124, 132) for y in (100, 108, 116, 124, 132)}


def test_large_box_goes_to_p5():
    # Box 300x200 centred at (150, 100). P5 (stride 32, cells at 16 + 32k), centre region
    # x in [102, 198], y in [52, 148] -> x 112, 144, 176 and y 80, 112, 144; their max distances
    # (156..188) lie in (128, 256]. P4 candidates have max distance > 128 and P6 ones < 256.
    t = _targets([torch.tensor([[0.0, 0.0, 300.0, 200.0]])], [torch.tensor([1])])
    pos = _positives(t)
    assert set(pos) == {2}
    assert pos[2] == {(x, y) for x in (112, 144, 176) for y in (80, 112, 144)}


def test_regression_targets_normalised_by_stride():
    t = _targets([torch.tensor([[96.0, 96.0, 136.0, 136.0]])], [torch.tensor([0])])
    locs = torch.cat(_locations())
    idx = ((locs[:, 0] == 116) & (locs[:, 1] == 108)).nonzero()[0, 0]  # a P3 location
    # l = 20, t = 12, r = 20, b = 28 pixels; / stride 8.
    torch.testing.assert_close(t.reg_targets[0, idx], torch.tensor([2.5, 1.5, 2.5, 3.5]))
    t_raw = _targets(
        [torch.tensor([[96.0, 96.0, 136.0, 136.0]])], [torch.tensor([0])], norm_reg_targets=False
    )
    torch.testing.assert_close(t_raw.reg_targets[0, idx], torch.tensor([20.0, 12.0, 20.0, 28.0]))


def test_ambiguous_location_takes_the_smaller_box():
    # Location (44, 44) lies in both boxes; both are P3-sized; B (smaller) must win.
    boxes = torch.tensor([[0.0, 0.0, 60.0, 60.0], [20.0, 20.0, 60.0, 60.0]])
    t = _targets([boxes], [torch.tensor([0, 1])], center_sample=False)
    locs = torch.cat(_locations())
    idx = ((locs[:, 0] == 44) & (locs[:, 1] == 44)).nonzero()[0, 0]
    assert t.labels[0, idx].item() == 1
    assert t.gt_inds[0, idx].item() == 1
    idx_a = ((locs[:, 0] == 12) & (locs[:, 1] == 12)).nonzero()[0, 0]  # only in A
    assert t.labels[0, idx_a].item() == 0


def test_gt_inds_are_offset_over_the_batch_and_empty_images_are_background():
    small = torch.tensor([[96.0, 96.0, 136.0, 136.0]])
    two = torch.tensor([[0.0, 0.0, 300.0, 200.0], [96.0, 96.0, 136.0, 136.0]])
    t = _targets(
        [small, torch.zeros((0, 4)), two],
        [torch.tensor([0]), torch.zeros(0, dtype=torch.long), torch.tensor([1, 2])],
    )
    assert t.labels.shape == (3, sum((IMAGE // s) ** 2 for s in STRIDES))
    assert set(t.gt_inds[0][t.gt_inds[0] >= 0].tolist()) == {0}
    assert (t.labels[1] == NUM_CLASSES).all() and (t.gt_inds[1] == -1).all()
    # Image 2's boxes are 1 and 2 in the concatenated ground truth.
    assert set(t.gt_inds[2][t.gt_inds[2] >= 0].tolist()) == {1, 2}
    assert set(t.labels[2][t.gt_inds[2] == 1].tolist()) == {1}
    assert set(t.labels[2][t.gt_inds[2] == 2].tolist()) == {2}


def test_mask_centres_move_the_sampling_region():
    # Centre given at (108, 108) instead of the box centre (116, 116): region [96, 120] clipped to
    # the box -> P3 cells 100, 108, 116.
    t = _targets(
        [torch.tensor([[96.0, 96.0, 136.0, 136.0]])],
        [torch.tensor([0])],
        gt_centers=[torch.tensor([[108.0, 108.0]])],
    )
    assert _positives(t)[0] == {(x, y) for x in (100, 108, 116) for y in (100, 108, 116)}


def test_centerness_targets_hand_values():
    reg = torch.tensor([[2.0, 2.0, 2.0, 2.0], [1.0, 1.0, 3.0, 1.0], [1.0, 1.0, 4.0, 4.0]])
    expected = torch.tensor([1.0, (1 / 3) ** 0.5, (1 / 16) ** 0.5])
    torch.testing.assert_close(centerness_targets(reg), expected)
    assert centerness_targets(torch.zeros((0, 4))).shape == (0,)


def test_bad_strides_are_reported():
    with pytest.raises(ValueError, match="strides"):
        compute_fcos_targets(_locations(), STRIDES[:4], SOI, [], [], NUM_CLASSES)
