"""idip.ops.export: the static-shape decompositions equal the kernels, and the ONNX translations
(RoiAlign, NonMaxSuppression) run in onnxruntime with the kernels' numbers."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import idip.ops
from idip.ops.export import (
    ONNX_OPSET,
    box_ddim_step_static,
    multilevel_roi_align_static,
    onnx_decompositions,
    onnx_translations,
)

HAS_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="onnx, onnxscript or onnxruntime missing")


def _random_boxes(g: torch.Generator, k: int, size: float) -> torch.Tensor:
    xy = torch.rand(k, 2, generator=g) * size
    wh = torch.rand(k, 2, generator=g) * size / 2 + 1
    return torch.cat([xy, xy + wh], dim=1)


def _rois(g: torch.Generator, k: int, batch: int, size: float) -> torch.Tensor:
    index = torch.randint(0, batch, (k, 1), generator=g).float()
    return torch.cat([index, _random_boxes(g, k, size)], dim=1)


def test_box_ddim_step_static_equals_the_kernel():
    g = torch.Generator().manual_seed(0)
    b, n = 3, 17
    x_t = torch.randn(b, n, 4, generator=g)
    image_size = torch.tensor([[96.0, 64.0, 96.0, 64.0], [50.0, 70.0, 50.0, 70.0]] * 2)[:b]
    pred = _random_boxes(g, b * n, 60).reshape(b, n, 4)
    keep = torch.rand(b, n, generator=g) > 0.4
    keep[1] = True  # every row kept
    keep[2] = False  # every row renewed
    noise, renew = torch.randn(2, b, n, 4, generator=g)
    for eta in (0.0, 1.0):
        args = (x_t, pred, image_size, 0.3, 0.6, eta, keep, noise, renew)
        want = idip.ops.box_ddim_step(*args)
        got = box_ddim_step_static(*args)
        for w, o in zip(want, got):
            torch.testing.assert_close(o, w, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sampling_ratio", [2, 0])
def test_multilevel_roi_align_static_equals_the_kernel(sampling_ratio):
    g = torch.Generator().manual_seed(1)
    features = [torch.randn(2, 5, 64 // s, 96 // s, generator=g) for s in (8, 16, 32)]
    rois = _rois(g, 40, 2, 200)  # boxes of every size: all three levels are used
    args = (rois, 7, 7, [1 / 8, 1 / 16, 1 / 32], sampling_ratio, True, 224.0, 4)
    want = idip.ops.multilevel_roi_align(features, rois, 7, [1 / 8, 1 / 16, 1 / 32], sampling_ratio)
    got = multilevel_roi_align_static(features, *args)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_every_op_in_a_model_export_is_covered():
    """Each forward op has a decomposition or an ONNX translation."""
    covered = set(onnx_decompositions())
    if HAS_ONNX:
        covered |= set(onnx_translations())
        ops = ["roi_align", "multilevel_roi_align", "nms", "batched_nms", "aligned_upsample"]
        ops += ["dynamic_mask_head", "box_q_sample", "box_ddim_step"]
        assert {getattr(torch.ops.idip, op).default for op in ops} <= covered


# ---------------------------------------------------------------------------------------------
# ONNX translations, run by onnxruntime
# ---------------------------------------------------------------------------------------------
def _run_onnx(module: torch.nn.Module, args: tuple, path) -> list:
    import onnxruntime

    with torch.no_grad():
        program = torch.export.export(module, args, strict=False)
    onnx_program = torch.onnx.export(
        program,
        args,
        dynamo=True,
        custom_translation_table=onnx_translations(),
        opset_version=ONNX_OPSET,
        external_data=False,
    )
    onnx_program.save(str(path), external_data=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)}
    return [torch.from_numpy(o) for o in session.run(None, feed)]


class _Op(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


@needs_onnx
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [2, 0])
def test_roi_align_as_onnx_roialign(tmp_path, aligned, sampling_ratio):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 12, 16, generator=g)
    rois = _rois(g, 9, 2, 100)

    def fn(x, rois):
        return idip.ops.roi_align(x, rois, (5, 4), 1 / 8, sampling_ratio, aligned)

    (got,) = _run_onnx(_Op(fn), (x, rois), tmp_path / "roi_align.onnx")
    torch.testing.assert_close(got, fn(x, rois), atol=1e-5, rtol=1e-5)


@needs_onnx
def test_batched_nms_and_nms_as_onnx_nonmaxsuppression(tmp_path):
    g = torch.Generator().manual_seed(3)
    k = 300
    boxes = _random_boxes(g, k, 100)
    scores = torch.rand(k, generator=g)
    scores[:20] = scores[20:40]  # equal scores: taken in index order, as the kernel does
    labels = torch.randint(0, 4, (k,), generator=g)
    labels[labels == 2] = 3  # a class index without boxes

    def fn(boxes, scores, labels):
        return (
            idip.ops.batched_nms(boxes, scores, labels, 0.5),
            idip.ops.nms(boxes, scores, 0.3),
        )

    got = _run_onnx(_Op(fn), (boxes, scores, labels), tmp_path / "nms.onnx")
    want = fn(boxes, scores, labels)
    assert 0 < want[0].numel() < k and 0 < want[1].numel() < want[0].numel()
    for o, w in zip(got, want):
        assert torch.equal(o, w)
