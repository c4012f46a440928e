"""poolers: roi layout, argument checks; op_library: the kernels/reference switch."""

from __future__ import annotations

import pytest
import torch

import idip.ops
from idip.modeling.op_library import op_library
from idip.modeling.poolers import MultiLevelRoIPooler, box_lists_to_rois, boxes_to_rois


def test_boxes_to_rois_layout():
    boxes = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    rois = boxes_to_rois(boxes)
    assert rois.shape == (6, 5)
    assert rois[:, 0].tolist() == [0, 0, 0, 1, 1, 1]
    torch.testing.assert_close(rois[4, 1:], boxes[1, 1])
    lists = box_lists_to_rois([boxes[0, :2], boxes[1, :1]])
    assert lists[:, 0].tolist() == [0, 0, 1]
    torch.testing.assert_close(lists[2, 1:], boxes[1, 0])
    chosen = box_lists_to_rois([boxes[0, :1], boxes[1, :2]], image_indices=[3, 5])
    assert chosen[:, 0].tolist() == [3, 5, 5]
    assert box_lists_to_rois([]).shape == (0, 5)
    with pytest.raises(ValueError, match="boxes"):
        boxes_to_rois(torch.zeros(3, 4))


def test_op_library_switches_between_kernels_and_reference():
    ref = op_library(True)
    assert ref.__name__ == "idip.ops.reference"
    assert op_library(False) is idip.ops
    for name in (
        "roi_align",
        "multilevel_roi_align",
        "batched_nms",
        "aligned_upsample",
        "dynamic_mask_head",
        "box_q_sample",
        "box_ddim_step",
    ):
        assert callable(getattr(ref, name)) and callable(getattr(idip.ops, name)), name


def test_pooler_checks_strides_and_handles_empty():
    with pytest.raises(ValueError, match="strides"):
        MultiLevelRoIPooler(7, [8, 12, 32], 2)
    with pytest.raises(ValueError, match="consecutive"):
        MultiLevelRoIPooler(7, [8, 32], 2)
    pooler = MultiLevelRoIPooler(7, [8, 16], 2)
    out = pooler([torch.zeros(1, 5, 8, 8), torch.zeros(1, 5, 4, 4)], torch.zeros(0, 5))
    assert out.shape == (0, 5, 7, 7)
