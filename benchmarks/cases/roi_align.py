"""roi_align and multilevel_roi_align at IDIP's sizes.

Batch 2, 300 boxes per image, p3-p5 of an 800x1216 image (100x152, 50x76, 25x38), 256 channels,
7x7 (box head) and 14x14 (mask head) outputs, sampling ratio 2, aligned.

Rows: for roi_align the plain-PyTorch reference (on p3 alone); for multilevel_roi_align the
reference is detectron2's ROIPooler way — assign levels, then one roi_align per level (ours) with
a gather of the level's boxes and a scatter of the results; "torchvision" is the same loop over
torchvision.ops.roi_align, when importable.
"""

from __future__ import annotations

import torch
from timing import Case

import idip.ops
from idip.ops import reference as ref

try:
    import torchvision.ops as tv_ops
except ImportError:
    tv_ops = None

BATCH, BOXES_PER_IMAGE, CHANNELS = 2, 300, 256
IMAGE_H, IMAGE_W = 800, 1216
SCALES = [1 / 8, 1 / 16, 1 / 32]


def _rois(gen: torch.Generator) -> torch.Tensor:
    """Boxes of 16..800 pixels (log-uniform sizes) anywhere in the image, 300 per image."""
    k = BATCH * BOXES_PER_IMAGE
    b = torch.arange(BATCH).repeat_interleave(BOXES_PER_IMAGE).float()
    wh = (
        torch.exp(
            torch.rand(k, 2, generator=gen)
            * (torch.log(torch.tensor(800.0)) - torch.log(torch.tensor(16.0)))
        )
        * 16
    )
    cx = torch.rand(k, generator=gen) * IMAGE_W
    cy = torch.rand(k, generator=gen) * IMAGE_H
    x1 = (cx - wh[:, 0] / 2).clamp(0, IMAGE_W)
    y1 = (cy - wh[:, 1] / 2).clamp(0, IMAGE_H)
    x2 = (cx + wh[:, 0] / 2).clamp(0, IMAGE_W)
    y2 = (cy + wh[:, 1] / 2).clamp(0, IMAGE_H)
    return torch.stack([b, x1, y1, x2, y2], dim=1)


def _setup(device: str, out: int, backward: bool):
    def setup():
        gen = torch.Generator().manual_seed(0)
        feats = [
            torch.randn(BATCH, CHANNELS, int(IMAGE_H * s), int(IMAGE_W * s), generator=gen)
            for s in SCALES
        ]
        feats = [f.to(device).requires_grad_(backward) for f in feats]
        rois = _rois(gen).to(device)
        grad = torch.randn(rois.shape[0], CHANNELS, out, out, generator=gen).to(device)
        return feats, rois, grad

    return setup


def _run(fn, backward: bool):
    def call(inputs):
        feats, rois, grad = inputs
        y = fn(feats, rois)
        if backward:
            return torch.autograd.grad(
                y, [f for f in feats if f.requires_grad], grad, allow_unused=True
            )
        return y

    return call


def cases(device: str) -> list[Case]:
    out_cases = []
    k = BATCH * BOXES_PER_IMAGE
    for out in (7, 14):
        for backward in (False, True):
            kind = "fwd+bwd" if backward else "fwd"
            out_bytes = k * CHANNELS * out * out * 4

            # roi_align on p3 alone.
            def single(impl, out=out):
                return lambda feats, rois: impl(feats[0], rois, out, SCALES[0], 2, True)

            impls = {
                "reference": _run(single(ref.roi_align), backward),
                "ours": _run(single(idip.ops.roi_align), backward),
            }
            if tv_ops is not None:
                impls["torchvision"] = _run(single(tv_ops.roi_align), backward)
            single_setup = _setup(device, out, backward)

            def p3_only(setup=single_setup):
                feats, rois, grad = setup()
                return [feats[0]], rois, grad

            out_cases.append(
                Case(
                    name=f"roi_align {out}x{out} {kind} (p3, K={k}, C={CHANNELS})",
                    group="roi_align",
                    pass_kind=kind,
                    setup=p3_only,
                    impls=impls,
                    bytes=out_bytes,
                    note="reference: plain-PyTorch gathers; bytes: the pooled output only",
                )
            )

            # multilevel_roi_align over p3-p5.
            def loop(roi_align_fn, out=out):
                return lambda feats, rois: ref.multilevel_roi_align_loop(
                    roi_align_fn, feats, rois, out, SCALES, 2, True, 224, 4
                )

            def fused(feats, rois, out=out):
                return idip.ops.multilevel_roi_align(feats, rois, out, SCALES, 2, True, 224, 4)

            impls = {
                "reference": _run(loop(idip.ops.roi_align), backward),
                "ours": _run(fused, backward),
            }
            if tv_ops is not None:
                impls["torchvision"] = _run(loop(tv_ops.roi_align), backward)
            out_cases.append(
                Case(
                    name=f"multilevel_roi_align {out}x{out} {kind} (p3-p5, K={k}, C={CHANNELS})",
                    group="roi_align",
                    pass_kind=kind,
                    setup=_setup(device, out, backward),
                    impls=impls,
                    bytes=out_bytes,
                    note="reference: ROIPooler-style per-level loop calling idip.ops.roi_align; "
                    "bytes: the pooled output only",
                )
            )
    return out_cases
