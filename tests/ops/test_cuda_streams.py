"""On a GPU: the kernels run on the caller's current stream, and the ops that must not
synchronise with the host do not. (Streams and host synchronisation do not exist in the CPU
emulation, so these run only on a real GPU.)"""

import pytest
import torch

from idip.ops import (
    aligned_upsample,
    batched_nms,
    box_ddim_step,
    box_q_sample,
    dynamic_mask_head,
    multilevel_roi_align,
    nms,
    roi_align,
)

from .test_box_ddim_step import _inputs as ddim_inputs
from .test_box_q_sample import _inputs as q_sample_inputs
from .test_dynamic_mask_head import _inputs as mask_head_inputs
from .test_multilevel_roi_align import SCALES, make_pyramid
from .test_nms import make_boxes

pytestmark = pytest.mark.cuda


def _all_ops(seed, device="cuda"):
    """Runs every op forward and, where differentiable, backward; returns their results."""
    gen = torch.Generator().manual_seed(seed)
    feats, rois = make_pyramid(2, 4, 128, 160, 40, torch.float32, device, seed=1)
    feats = [f.requires_grad_() for f in feats]
    pooled = multilevel_roi_align(feats, rois, 7, SCALES, 2, True, 56, 4)
    pooled.square().sum().backward()
    single = roi_align(feats[0].detach(), rois, 5, SCALES[0], 2, True)
    x = torch.randn(2, 3, 9, 11, generator=gen).to(device).requires_grad_()
    up = aligned_upsample(x, 4)
    up.square().sum().backward()
    tensors, kwargs = mask_head_inputs(2, 30, 20, 24, torch.float32, device, gen)
    mf, params = (t.requires_grad_() for t in tensors[:2])
    logits = dynamic_mask_head(mf, params, *tensors[2:], **kwargs)
    logits.square().sum().backward()
    boxes, scores = make_boxes(500, torch.float32, device, seed=2)
    keep = nms(boxes, scores, 0.5)
    keep_b = batched_nms(boxes, scores, (scores * 7).long(), 0.5)
    q = box_q_sample(
        *q_sample_inputs(4, 300, torch.float32, device, torch.Generator().manual_seed(3))
    )
    x_t, pred, size, keep_rows, noise, renew = ddim_inputs(
        4, 300, torch.float32, device, torch.Generator().manual_seed(4), "random"
    )
    d = box_ddim_step(x_t, pred, size, 0.2, 0.5, 1.0, keep_rows, noise, renew)
    return [
        pooled,
        *[f.grad for f in feats],
        single,
        up,
        x.grad,
        logits,
        mf.grad,
        params.grad,
        keep,
        keep_b,
        *q,
        *d,
    ]


def test_ops_run_on_the_current_stream():
    """The same results on a side stream as on the default one, read only after the side
    stream is synchronised (a kernel launched on the default stream would race with it)."""
    expected = [t.clone() for t in _all_ops(0)]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        got = _all_ops(0)
    side.synchronize()
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_box_ops_roi_pooling_and_mask_head_do_not_synchronise():
    """Under set_sync_debug_mode("error") any host synchronisation raises."""
    gen = torch.Generator().manual_seed(5)
    q_args = q_sample_inputs(4, 300, torch.float32, "cuda", gen)
    d_args = ddim_inputs(4, 300, torch.float32, "cuda", gen, "random")
    feats, rois = make_pyramid(2, 4, 128, 160, 40, torch.float32, "cuda", seed=6)
    feats = [f.requires_grad_() for f in feats]
    tensors, kwargs = mask_head_inputs(2, 30, 20, 24, torch.float32, "cuda", gen)
    mf, params = (t.requires_grad_() for t in tensors[:2])
    up_in = torch.randn(2, 3, 9, 11, device="cuda", requires_grad=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        box_q_sample(*q_args)
        x_t, pred, size, keep, noise, renew = d_args
        box_ddim_step(x_t, pred, size, 0.2, 0.5, 1.0, keep, noise, renew)
        multilevel_roi_align(feats, rois, 7, SCALES, 2, True, 56, 4).sum().backward()
        dynamic_mask_head(mf, params, *tensors[2:], **kwargs).sum().backward()
        aligned_upsample(up_in, 2).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
