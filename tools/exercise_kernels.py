"""Runs every idip kernel once, forward and backward, in every dtype it takes, on small inputs.

For compute-sanitizer on a GPU (tools/gpu_check.sh runs it under memcheck and racecheck): each
path of each kernel is launched at least once, at sizes that keep a sanitised run in seconds,
and every result is compared with the CPU kernels, so a run that corrupts memory also fails.

    python tools/exercise_kernels.py --device cuda        # a GPU
    python tools/exercise_kernels.py --device cuda-emu    # the CPU emulation of the CUDA kernels
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import idip.ops as ops  # noqa: E402

FLOAT_TYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _close(name, got, want, tol):
    torch.testing.assert_close(
        got.detach().cpu().float(),
        want.detach().cpu().float(),
        rtol=tol,
        atol=tol,
        msg=lambda m: f"{name}: {m}",
    )


def _tol(dtype):
    return {torch.float16: 2e-2, torch.bfloat16: 8e-2}.get(dtype, 1e-4)


def _as_oracle(x, dtype):
    """What the CPU kernels compare with: x rounded to dtype, in float32 for the half types."""
    return x.to(dtype) if dtype in (torch.float32, torch.float64) else x.to(dtype).float()


def _backward(out, inputs, gen):
    grad = torch.randn(out.shape, generator=gen).to(out.device, out.dtype)
    return torch.autograd.grad(out, inputs, grad), grad


def exercise_roi_align(device, dtype, gen):
    feats = [torch.randn(2, 5, 40 >> k, 48 >> k, generator=gen) for k in range(3)]
    xy = torch.rand(30, 2, generator=gen) * 300
    wh = torch.rand(30, 2, generator=gen) ** 2 * 300 + 1
    rois = torch.cat([torch.randint(0, 2, (30, 1), generator=gen).float(), xy, xy + wh], 1)
    scales = [1 / 8, 1 / 16, 1 / 32]
    for multilevel in (False, True):
        dev = [f.to(device, dtype).requires_grad_() for f in feats]
        cpu = [_as_oracle(f, dtype).requires_grad_() for f in feats]
        if multilevel:
            out = ops.multilevel_roi_align(dev, rois.to(device, dtype), 7, scales, 2, True, 56, 4)
            grads, g = _backward(out, dev, gen)
            want = torch.ops.idip.multilevel_roi_align(
                cpu, _as_oracle(rois, dtype), 7, 7, scales, 2, True, 56.0, 4
            )
            want_grads = torch.autograd.grad(
                want, cpu, _as_oracle(g.cpu(), dtype), allow_unused=True
            )
        else:
            out = ops.roi_align(dev[0], rois.to(device, dtype), (5, 4), 1 / 8, -1, True)
            grads, g = _backward(out, dev[:1], gen)
            want = torch.ops.idip.roi_align(cpu[0], _as_oracle(rois, dtype), 5, 4, 1 / 8, -1, True)
            want_grads = torch.autograd.grad(want, cpu[:1], _as_oracle(g.cpu(), dtype))
        _close(f"roi_align(multilevel={multilevel}, {dtype})", out, want, _tol(dtype))
        for a, b in zip(grads, want_grads):
            if b is not None:
                _close(
                    f"roi_align backward (multilevel={multilevel}, {dtype})", a, b, 3 * _tol(dtype)
                )


def exercise_nms(device, dtype, gen):
    if dtype in (torch.float16, torch.bfloat16) and device == "cpu":
        return  # half-precision NMS is a CUDA kernel only
    n = 700  # 11 words of 64 boxes
    centres = torch.rand(n // 10, 2, generator=gen)[torch.randint(0, n // 10, (n,), generator=gen)]
    c = centres * 200 + torch.randn(n, 2, generator=gen) * 3
    wh = torch.rand(n, 2, generator=gen) * 20 + 1
    boxes = torch.cat([c - wh / 2, c + wh / 2], 1).to(dtype)
    scores = torch.rand(n, generator=gen).to(dtype)
    idxs = torch.randint(0, 5, (n,), generator=gen)
    want = torch.ops.idip.nms(boxes.float(), scores.float(), 0.5)
    want_batched = torch.ops.idip.batched_nms(boxes.float(), scores.float(), idxs, 0.5)
    for limit in (None, "0"):  # the shared-memory scan, then the global-memory one
        if limit is not None:
            os.environ["IDIP_NMS_MAX_SHARED_BYTES"] = limit
        try:
            got = ops.nms(boxes.to(device), scores.to(device), 0.5)
            got_batched = ops.batched_nms(boxes.to(device), scores.to(device), idxs.to(device), 0.5)
        finally:
            os.environ.pop("IDIP_NMS_MAX_SHARED_BYTES", None)
        if not (torch.equal(got.cpu(), want) and torch.equal(got_batched.cpu(), want_batched)):
            raise AssertionError(f"nms ({dtype}, shared limit {limit}) differs from the CPU kernel")


def exercise_aligned_upsample(device, dtype, gen):
    x = torch.randn(2, 3, 9, 13, generator=gen)
    for factor in (2, 4):
        xd = x.to(device, dtype).requires_grad_()
        out = ops.aligned_upsample(xd, factor)
        (grad,), g = _backward(out, [xd], gen)
        xc = _as_oracle(x, dtype).requires_grad_()
        want = torch.ops.idip.aligned_upsample(xc, factor)
        (want_grad,) = torch.autograd.grad(want, xc, _as_oracle(g.cpu(), dtype))
        _close(f"aligned_upsample(x{factor}, {dtype})", out, want, _tol(dtype))
        _close(f"aligned_upsample backward (x{factor}, {dtype})", grad, want_grad, _tol(dtype))


def exercise_dynamic_mask_head(device, dtype, gen):
    # 24 x 25 pixels: three 256-pixel blocks per instance; widths 8, 16, 32; and 256 mask
    # channels at width 32, whose backward stages its parameters past 48 KiB of shared memory.
    for feat_channels, channels, n in ((8, 8, 12), (8, 16, 5), (8, 32, 3), (256, 32, 2)):
        if feat_channels == 256 and dtype != torch.float32:
            continue
        H, W = (24, 25) if feat_channels == 8 else (4, 5)
        P = ops.dynamic_mask_head_num_params(feat_channels, channels)
        feats = torch.randn(2, feat_channels, H, W, generator=gen)
        params = torch.randn(n, P, generator=gen) * 0.3
        im_inds = torch.randint(0, 2, (n,), generator=gen)
        locations = torch.rand(n, 2, generator=gen) * 8 * torch.tensor([W, H])
        soi = torch.full((n,), 64.0)
        kw = dict(mask_stride=8, channels=channels)
        fd, pd = feats.to(device, dtype).requires_grad_(), params.to(device, dtype).requires_grad_()
        out = ops.dynamic_mask_head(
            fd, pd, im_inds.to(device), locations.to(device, dtype), soi.to(device, dtype), **kw
        )
        grads, g = _backward(out, [fd, pd], gen)
        fc = _as_oracle(feats, dtype).requires_grad_()
        pc = _as_oracle(params, dtype).requires_grad_()
        want = torch.ops.idip.dynamic_mask_head(
            fc,
            pc,
            im_inds,
            _as_oracle(locations, dtype),
            _as_oracle(soi, dtype),
            8,
            channels,
            3,
            True,
        )
        want_grads = torch.autograd.grad(want, [fc, pc], _as_oracle(g.cpu(), dtype))
        scale = max(1.0, want.abs().max().item())
        _close(
            f"dynamic_mask_head(C={feat_channels}, width {channels}, {dtype})",
            out / scale,
            want / scale,
            _tol(dtype),
        )
        for a, b in zip(grads, want_grads):
            s = max(1.0, b.abs().max().item())
            _close(
                f"dynamic_mask_head backward (width {channels}, {dtype})",
                a / s,
                b / s,
                3 * _tol(dtype),
            )


def exercise_box_ops(device, dtype, gen):
    B, N, T = 3, 300, 1000
    x_start = torch.rand(B, N, 4, generator=gen) * 2 - 1
    noise = torch.randn(B, N, 4, generator=gen)
    t = torch.randint(0, T, (B,), generator=gen)
    ac = torch.linspace(0.9999, 1e-4, T, dtype=torch.float64)
    wh = torch.randint(16, 1400, (B, 2), generator=gen).float()
    size = torch.cat([wh, wh], 1)
    got = ops.box_q_sample(
        x_start.to(device, dtype),
        noise.to(device, dtype),
        t.to(device),
        ac.to(device),
        size.to(device, dtype),
    )
    low = [v.to(dtype).float() for v in (x_start, noise, size)]
    want = torch.ops.idip.box_q_sample(low[0], low[1], t, ac.to(dtype).double(), low[2])
    _close(f"box_q_sample x_t ({dtype})", got[0], want[0], _tol(dtype))
    pred = torch.rand(B, N, 4, generator=gen) * 500
    keep = torch.rand(B, N, generator=gen) < 0.4
    renew = torch.randn(B, N, 4, generator=gen)
    got = ops.box_ddim_step(
        x_start.to(device, dtype),
        pred.to(device, dtype),
        size.to(device, dtype),
        0.2,
        0.5,
        1.0,
        keep.to(device),
        noise.to(device, dtype),
        renew.to(device, dtype),
    )
    low = [v.to(dtype).float() for v in (x_start, pred, size, noise, renew)]
    want = torch.ops.idip.box_ddim_step(low[0], low[1], low[2], 0.2, 0.5, 1.0, keep, low[3], low[4])
    _close(f"box_ddim_step x_next ({dtype})", got[0], want[0], 2 * _tol(dtype))


EXERCISES = [
    exercise_roi_align,
    exercise_nms,
    exercise_aligned_upsample,
    exercise_dynamic_mask_head,
    exercise_box_ops,
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", choices=["cuda", "cuda-emu", "cpu"])
    args = parser.parse_args(argv)
    device = "cpu" if args.device == "cuda-emu" else args.device
    context = ops.cuda_emulation() if args.device == "cuda-emu" else contextlib.nullcontext()
    dtypes = FLOAT_TYPES if args.device != "cpu" else FLOAT_TYPES[:2]
    gen = torch.Generator().manual_seed(0)
    with context:
        for exercise in EXERCISES:
            for dtype in dtypes:
                exercise(device, dtype, gen)
            print(
                f"{exercise.__name__[len('exercise_') :]}: ok ({', '.join(map(str, dtypes))})",
                flush=True,
            )
    if device == "cuda":
        torch.cuda.synchronize()
    print(f"every kernel ran on {args.device} and matched the CPU kernels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
