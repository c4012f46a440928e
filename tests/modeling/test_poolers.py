"""poolers: roi layout, op selection, argument checks."""

from __future__ import annotations

import pytest
import torch

from idip.modeling.poolers import MultiLevelRoIPooler, box_lists_to_rois, boxes_to_rois, select_ops


def test_boxes_to_rois_layout():
    boxes = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    rois = boxes_to_rois(boxes)
    assert rois.shape == (6, 5)
    assert rois[:, 0].tolist() == [0, 0, 0, 1, 1, 1]
    torch.testing.assert_close(rois[4, 1:], boxes[1, 1])
    lists = box_lists_to_rois([boxes[0, :2], boxes[1, :1]])
    assert lists[:, 0].tolist() == [0, 0, 1]
    with pytest.raises(ValueError, match="boxes"):
        boxes_to_rois(torch.zeros(3, 4))


def test_select_ops_reference_has_same_names():
    ref = select_ops(True)
    assert ref.__name__ == "idip.ops.reference"
    assert hasattr(ref, "box_q_sample")


def test_pooler_checks_strides_and_handles_empty():
    with pytest.raises(ValueError, match="strides"):
        MultiLevelRoIPooler(7, [8, 12, 32], 2, ops=None)
    with pytest.raises(ValueError, match="consecutive"):
        MultiLevelRoIPooler(7, [8, 32], 2, ops=None)
    pooler = MultiLevelRoIPooler(7, [8, 16], 2, ops=None)
    out = pooler([torch.zeros(1, 5, 8, 8), torch.zeros(1, 5, 4, 4)], torch.zeros(0, 5))
    assert out.shape == (0, 5, 7, 7)
