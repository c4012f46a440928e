"""CondInst's mask path: the fused dynamic mask head and aligned upsampling.

Sizes are CondInst's training defaults: B=2 images of 800x1216, mask features at stride 8
(100x152, 8 channels), 169 dynamic parameters per instance, up to 500 instances per GPU for the
mask loss; masks are upsampled x2 to stride 4 for the Dice loss.
"""

from __future__ import annotations

import torch
from timing import Case

import idip.ops
from idip.ops import reference as ref

B, C, H, W, STRIDE = 2, 8, 100, 152, 8


def _dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """CondInst's Dice loss (AdelaiDet's dice_coefficient), summed over instances."""
    x = logits.sigmoid().flatten(1)
    t = targets.flatten(1)
    inter = (x * t).sum(1)
    union = (x * x).sum(1) + (t * t).sum(1) + 1e-5
    return (1 - 2 * inter / union).sum()


def _head_inputs(N: int, device: str, requires_grad: bool):
    g = torch.Generator().manual_seed(N)
    P = idip.ops.dynamic_mask_head_num_params(C)
    feats = torch.randn(B, C, H, W, generator=g)
    params = torch.randn(N, P, generator=g) * 0.3
    im_inds = torch.randint(0, B, (N,), generator=g)
    locations = torch.rand(N, 2, generator=g) * torch.tensor([W * STRIDE, H * STRIDE])
    soi = torch.tensor([64.0, 128.0, 256.0, 512.0, 1024.0])[torch.randint(0, 5, (N,), generator=g)]
    targets = (torch.rand(N, 1, 2 * H, 2 * W, generator=g) > 0.7).float()
    out = [t.to(device) for t in (feats, params, im_inds, locations, soi, targets)]
    if requires_grad:
        out[0].requires_grad_(True)
        out[1].requires_grad_(True)
    return out


def _head_fwd(head):
    def run(a):
        with torch.no_grad():
            return head(*a[:5], STRIDE)

    return run


def _head_fwd_bwd(head, upsample):
    def run(a):
        logits = upsample(head(*a[:5], STRIDE), 2)
        loss = _dice_loss(logits, a[5])
        return torch.autograd.grad(loss, (a[0], a[1]))

    return run


def _upsample_fwd(upsample):
    def run(a):
        with torch.no_grad():
            return upsample(a[0], 2)

    return run


def _upsample_fwd_bwd(upsample):
    def run(a):
        return torch.autograd.grad(upsample(a[0], 2), a[0], a[1])

    return run


def cases(device: str) -> list[Case]:
    out = []
    # MACs per (instance, pixel): (8+2)*8 + 8*8 + 8*1 = 152 -> 304 FLOPs.
    flops_per_pixel = 2 * ((C + 2) * 8 + 8 * 8 + 8)
    for N in (100, 500):
        fwd_flops = N * H * W * flops_per_pixel
        out.append(
            Case(
                name=f"dynamic_mask_head fwd (B={B}, N={N}, C={C}, {H}x{W})",
                group="condinst",
                pass_kind="fwd",
                setup=lambda N=N: _head_inputs(N, device, False),
                impls={
                    "reference": _head_fwd(ref.dynamic_mask_head),
                    "ours": _head_fwd(idip.ops.dynamic_mask_head),
                },
                flops=fwd_flops,
                note="FLOPs of the 1x1 layers only (304 per instance-pixel)",
            )
        )
        out.append(
            Case(
                name=f"dynamic_mask_head+aligned_upsample x2+dice fwd+bwd (B={B}, N={N})",
                group="condinst",
                pass_kind="fwd+bwd",
                setup=lambda N=N: _head_inputs(N, device, True),
                impls={
                    "reference": _head_fwd_bwd(ref.dynamic_mask_head, ref.aligned_upsample),
                    "ours": _head_fwd_bwd(idip.ops.dynamic_mask_head, idip.ops.aligned_upsample),
                },
                flops=3 * fwd_flops,
                note="FLOPs = 3x the head's forward (forward, input and weight gradients); the "
                "upsample and Dice loss are timed but not counted",
            )
        )
    for shape in ((100, 1, H, W), (B, 128, H, W)):
        numel = shape[0] * shape[1] * shape[2] * shape[3]
        elem = 4

        def setup(shape=shape):
            g = torch.Generator().manual_seed(0)
            x = torch.randn(*shape, generator=g).to(device).requires_grad_(True)
            grad = torch.randn(shape[0], shape[1], 2 * shape[2], 2 * shape[3], generator=g).to(
                device
            )
            return x, grad

        label = "x".join(str(s) for s in shape)
        out.append(
            Case(
                name=f"aligned_upsample x2 fwd [{label}]",
                group="condinst",
                pass_kind="fwd",
                setup=setup,
                impls={
                    "reference": _upsample_fwd(ref.aligned_upsample),
                    "ours": _upsample_fwd(idip.ops.aligned_upsample),
                },
                bytes=(1 + 4) * numel * elem,
                note="read the input once, write 4x as much",
            )
        )
        out.append(
            Case(
                name=f"aligned_upsample x2 fwd+bwd [{label}]",
                group="condinst",
                pass_kind="fwd+bwd",
                setup=setup,
                impls={
                    "reference": _upsample_fwd_bwd(ref.aligned_upsample),
                    "ours": _upsample_fwd_bwd(idip.ops.aligned_upsample),
                },
                bytes=2 * (1 + 4) * numel * elem,
                note="forward traffic plus reading the output gradient and writing the input gradient",
            )
        )
    return out
