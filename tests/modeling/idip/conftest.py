"""Fixtures for the IDIP model tests.

``roi_ops``: the op module the heads pool with — ``idip.ops`` once it provides the RoI ops,
otherwise a torchvision-based stand-in (torchvision is the test-only oracle of those ops), so the
model's own logic can be tested independently of the kernels.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch


def _torchvision_ops():
    tv = pytest.importorskip("torchvision.ops")

    def roi_align(input, rois, output_size, spatial_scale, sampling_ratio=-1, aligned=True):
        return tv.roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned)

    def multilevel_roi_align(features, rois, output_size, scales, sampling_ratio, aligned=True,
                             canonical_box_size=224, canonical_level=4):
        levels = [round(-math.log2(s)) for s in scales]
        area = (rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2])
        lvl = torch.floor(canonical_level + torch.log2(area.clamp(min=0).sqrt() / canonical_box_size + 1e-8))
        lvl = lvl.clamp(min(levels), max(levels)).long() - min(levels)
        c = features[0].shape[1]
        out = features[0].new_zeros((rois.shape[0], c, output_size, output_size))
        for i, (f, s) in enumerate(zip(features, scales)):
            idx = (lvl == i).nonzero(as_tuple=True)[0]
            if idx.numel():
                out[idx] = tv.roi_align(f, rois[idx], output_size, s, sampling_ratio, aligned)
        return out

    def batched_nms(boxes, scores, idxs, iou_threshold):
        return tv.batched_nms(boxes, scores, idxs, iou_threshold)

    def nms(boxes, scores, iou_threshold):
        return tv.nms(boxes, scores, iou_threshold)

    return SimpleNamespace(roi_align=roi_align, multilevel_roi_align=multilevel_roi_align,
                           batched_nms=batched_nms, nms=nms)


@pytest.fixture
def roi_ops():
    try:
        import idip.ops as ops
    except ImportError:
        ops = None
    if ops is not None and all(hasattr(ops, n) for n in ("roi_align", "multilevel_roi_align", "batched_nms")):
        return ops
    shim = _torchvision_ops()
    if ops is not None:
        # Keep the kernels that exist (box_q_sample, box_ddim_step, ...), add the stand-ins.
        for name in getattr(ops, "__all__", []):
            if not hasattr(shim, name):
                setattr(shim, name, getattr(ops, name))
    return shim


@pytest.fixture
def model_ops(roi_ops, monkeypatch):
    """Makes models built in the test use ``roi_ops`` (the real ops once they all exist)."""
    from idip.modeling.idip import detector

    monkeypatch.setattr(detector, "select_ops", lambda use_reference: roi_ops)
    return roi_ops
