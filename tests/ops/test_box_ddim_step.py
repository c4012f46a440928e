"""box_ddim_step against its reference, hand-computed values and its argument checks."""

import math

import pytest
import torch

from idip.modeling.idip.diffusion import DiffusionSchedule
from idip.ops import box_ddim_step
from idip.ops import reference as ref

from ..conftest import CUDA_DEVICES, OP_DEVICES, op_library

SCHEDULE = DiffusionSchedule(1000)


def _alpha_pairs(num_steps):
    """(alpha, alpha_next) of every step of a DDIM schedule; the final step (t_next = -1, where
    the sampler returns x0) is taken with alpha_next = 1, where the update is x0 itself."""
    ac = SCHEDULE.alphas_cumprod_host
    times = torch.linspace(-1, 999, num_steps + 1).long().flip(0).tolist()
    return [(ac[a], ac[b] if b >= 0 else 1.0) for a, b in zip(times[:-1], times[1:])]


def _random_abs_boxes(B, N, size, gen, dtype):
    """xyxy boxes that mostly lie in the image, some far outside, some zero-size, some inverted."""
    wh = size[:, None, :2].to(torch.float64)
    p = torch.rand(B, N, 2, generator=gen, dtype=torch.float64) * 1.4 - 0.2
    q = p + (torch.rand(B, N, 2, generator=gen, dtype=torch.float64) * 0.8 - 0.1)
    q[:, ::7] = p[:, ::7]  # zero size
    return (torch.cat([p * wh, q * wh], dim=-1)).to(dtype)


def _inputs(B, N, dtype, device, gen, keep_kind):
    x_t = (torch.randn(B, N, 4, generator=gen, dtype=torch.float64) * 1.5).to(dtype)
    wh = torch.randint(16, 1400, (B, 2), generator=gen).to(dtype)
    size = torch.cat([wh, wh], dim=1)
    pred = _random_abs_boxes(B, N, size, gen, dtype)
    if keep_kind == "all":
        keep = torch.ones(B, N, dtype=torch.bool)
    elif keep_kind == "none":
        keep = torch.zeros(B, N, dtype=torch.bool)
    else:
        keep = torch.rand(B, N, generator=gen) < torch.rand(B, 1, generator=gen)
    noise = torch.randn(B, N, 4, generator=gen, dtype=torch.float64).to(dtype)
    renew = torch.randn(B, N, 4, generator=gen, dtype=torch.float64).to(dtype)
    return [v.to(device) for v in (x_t, pred, size, keep, noise, renew)]


def _call(fn, x_t, pred, size, keep, noise, renew, alpha, alpha_next, eta):
    return fn(x_t, pred, size, alpha, alpha_next, eta, keep, noise, renew)


@pytest.mark.parametrize("device", OP_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B,N", [(1, 100), (4, 300), (16, 500), (1, 300), (16, 100)])
def test_matches_reference_every_step(device, dtype, B, N):
    gen = torch.Generator().manual_seed(B * 7919 + N)
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-9)
    for keep_kind in ("all", "none", "random"):
        args = _inputs(B, N, dtype, device, gen, keep_kind)
        for num_steps in (1, 3, 4):
            for alpha, alpha_next in _alpha_pairs(num_steps):
                for eta in (0.0, 1.0):
                    x_next, boxes = _call(box_ddim_step, *args, alpha, alpha_next, eta)
                    x_ref, boxes_ref = _call(ref.box_ddim_step, *args, alpha, alpha_next, eta)
                    torch.testing.assert_close(x_next, x_ref, **tol)
                    # Boxes are scaled by image sizes up to 1400 pixels.
                    torch.testing.assert_close(
                        boxes, boxes_ref, rtol=tol["rtol"], atol=tol["atol"] * 1400
                    )


def test_hand_computed_update_and_renewal_order():
    # Image 640x480; every row predicts the box (0, 0, 320, 240): x0 = (-0.5, -0.5, 0, 0).
    N = 5
    x_t = torch.arange(N * 4, dtype=torch.float64).reshape(1, N, 4) / 10 - 1
    pred = torch.tensor([0.0, 0.0, 320.0, 240.0], dtype=torch.float64).repeat(1, N, 1)
    size = torch.tensor([[640.0, 480.0, 640.0, 480.0]], dtype=torch.float64)
    keep = torch.tensor([[False, True, False, True, True]])
    noise = torch.full((1, N, 4), 0.5, dtype=torch.float64)
    renew = -torch.arange(1, N * 4 + 1, dtype=torch.float64).reshape(1, N, 4) / 100
    alpha, alpha_next = 0.25, 0.64
    x0 = torch.tensor([-0.5, -0.5, 0.0, 0.0], dtype=torch.float64)
    for eta in (0.0, 1.0):
        # sigma = eta * sqrt(1 - 0.25/0.64) * sqrt(0.36/0.75); c = sqrt(0.36 - sigma^2)
        sigma = eta * math.sqrt(0.609375) * math.sqrt(0.48)
        c = math.sqrt(0.36 - sigma**2)
        x_next, boxes = box_ddim_step(x_t, pred, size, alpha, alpha_next, eta, keep, noise, renew)
        for out_row, in_row in enumerate([1, 3, 4]):
            eps = (x_t[0, in_row] - 0.5 * x0) / math.sqrt(0.75)
            expected = 0.8 * x0 + c * eps + sigma * 0.5
            torch.testing.assert_close(x_next[0, out_row], expected)
        torch.testing.assert_close(x_next[0, 3:], renew[0, :2])
    # to_abs of renew row 0, (-0.01, -0.02, -0.03, -0.04): cx = 0.495, cy = 0.49, w = 0.485,
    # h = 0.48 -> xyxy (0.2525, 0.25, 0.7375, 0.73) of the image.
    torch.testing.assert_close(
        boxes[0, 3],
        torch.tensor([0.2525 * 640, 0.25 * 480, 0.7375 * 640, 0.73 * 480], dtype=torch.float64),
    )


@pytest.mark.parametrize("device", OP_DEVICES)
def test_final_step_with_alpha_next_one_returns_x0(device):
    gen = torch.Generator().manual_seed(3)
    x_t, pred, size, keep, noise, renew = _inputs(2, 64, torch.float64, device, gen, "all")
    for eta in (0.0, 1.0):
        x_next, boxes = box_ddim_step(x_t, pred, size, 0.3, 1.0, eta, keep, noise, renew)
        x1, y1, x2, y2 = (pred / size[:, None]).unbind(-1)
        x0 = torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], -1).clamp(0, 1) * 2 - 1
        torch.testing.assert_close(x_next, x0)


@pytest.mark.parametrize("device", OP_DEVICES)
def test_extreme_times_and_degenerate_boxes(device):
    ac = SCHEDULE.alphas_cumprod_host
    size = torch.tensor([[640.0, 480.0, 640.0, 480.0]], device=device).repeat(2, 1)
    # zero-size, far outside, inverted, covering the image and beyond
    pred = torch.tensor(
        [
            [
                [100.0, 100.0, 100.0, 100.0],
                [-900.0, -900.0, -800.0, -700.0],
                [600.0, 400.0, 50.0, 30.0],
                [-10.0, -10.0, 2000.0, 2000.0],
            ]
        ],
        device=device,
    ).repeat(2, 1, 1)
    x_t = torch.tensor(
        [
            [
                [0.0, 0.0, -1.0, -1.0],
                [5.0, -5.0, 3.0, 3.0],
                [1.0, 1.0, 1.0, 1.0],
                [-3.0, 0.0, 0.0, 9.0],
            ]
        ],
        device=device,
    ).repeat(2, 1, 1)
    keep = torch.tensor([[True, False, True, True], [False, True, True, False]], device=device)
    noise = torch.randn(2, 4, 4, generator=torch.Generator().manual_seed(0)).to(device)
    renew = torch.randn(2, 4, 4, generator=torch.Generator().manual_seed(1)).to(device) * 5
    # t = T-1 -> the next step, and t = 0 -> the end of the chain (alpha_next = 1).
    for alpha, alpha_next in [(ac[999], ac[998]), (ac[999], ac[665]), (ac[0], 1.0), (ac[1], ac[0])]:
        for eta in (0.0, 1.0):
            out = box_ddim_step(x_t, pred, size, alpha, alpha_next, eta, keep, noise, renew)
            expected = ref.box_ddim_step(
                x_t, pred, size, alpha, alpha_next, eta, keep, noise, renew
            )
            torch.testing.assert_close(out[0], expected[0], rtol=1e-5, atol=1e-4)
            torch.testing.assert_close(out[1], expected[1], rtol=1e-5, atol=1e-2)
            boxes = out[1]
            assert torch.isfinite(out[0]).all()
            assert (boxes[..., 2] >= boxes[..., 0]).all() and (boxes[..., 3] >= boxes[..., 1]).all()
            assert (boxes >= 0).all() and (boxes <= size[:, None]).all()


@pytest.mark.parametrize("device", OP_DEVICES)
def test_empty_shapes(device):
    for B, N in [(0, 10), (3, 0)]:
        z = torch.zeros(B, N, 4, device=device)
        keep = torch.zeros(B, N, dtype=torch.bool, device=device)
        x_next, boxes = box_ddim_step(
            z, z, torch.ones(B, 4, device=device), 0.3, 0.6, 1.0, keep, z, z
        )
        assert x_next.shape == (B, N, 4) and boxes.shape == (B, N, 4)


@pytest.mark.parametrize("device", OP_DEVICES)
def test_non_contiguous_inputs(device):
    gen = torch.Generator().manual_seed(11)
    args = _inputs(3, 50, torch.float32, device, gen, "random")
    x_t, pred, size, keep, noise, renew = args

    def strided(v):
        return v.transpose(0, 1).contiguous().transpose(0, 1)

    nc = [strided(v) for v in args]
    assert not any(v.is_contiguous() for v in nc)
    out = _call(box_ddim_step, *nc, 0.2, 0.5, 1.0)
    expected = _call(ref.box_ddim_step, *args, 0.2, 0.5, 1.0)
    torch.testing.assert_close(out[0], expected[0])
    torch.testing.assert_close(out[1], expected[1])


@pytest.mark.parametrize("device", CUDA_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_matches_float32_reference(device, dtype):
    gen = torch.Generator().manual_seed(5)
    args = _inputs(4, 300, torch.float32, device, gen, "random")
    low = [a.to(dtype) if a.is_floating_point() else a for a in args]
    x_next, boxes = _call(box_ddim_step, *low, 0.25, 0.6, 1.0)
    # the reference on the half-precision inputs, evaluated in float32
    back = [a.float() if a.is_floating_point() else a for a in low]
    x_ref, boxes_ref = _call(ref.box_ddim_step, *back, 0.25, 0.6, 1.0)
    assert x_next.dtype == dtype
    tol = 2e-2 if dtype == torch.float16 else 8e-2
    torch.testing.assert_close(x_next.float(), x_ref, rtol=tol, atol=tol)
    torch.testing.assert_close(boxes.float(), boxes_ref, rtol=tol, atol=tol * 1400)


@pytest.mark.parametrize("device", CUDA_DEVICES)
def test_cuda_many_chunks_and_images(device):
    # N spans several 256-row chunks and is not a multiple of 32; many images, mixed keep rates.
    gen = torch.Generator().manual_seed(9)
    args = _inputs(40, 1100, torch.float64, device, gen, "random")
    out = _call(box_ddim_step, *args, 0.1, 0.7, 1.0)
    expected = _call(ref.box_ddim_step, *args, 0.1, 0.7, 1.0)
    torch.testing.assert_close(out[0], expected[0])
    torch.testing.assert_close(out[1], expected[1])


def test_rejects_bad_arguments():
    z = torch.zeros(2, 5, 4)
    keep = torch.ones(2, 5, dtype=torch.bool)
    size = torch.ones(2, 4)

    def call(**kw):
        a = dict(
            x_t=z,
            pred_boxes=z,
            image_size=size,
            alpha=0.3,
            alpha_next=0.6,
            eta=1.0,
            keep=keep,
            noise=z,
            renew=z,
        )
        a.update(kw)
        return box_ddim_step(**a)

    with pytest.raises(RuntimeError, match="x_t must be"):
        call(x_t=torch.zeros(2, 5, 3))
    with pytest.raises(RuntimeError, match="pred_boxes must match x_t"):
        call(pred_boxes=torch.zeros(2, 4, 4))
    with pytest.raises(RuntimeError, match="renew must have x_t's dtype"):
        call(renew=z.double())
    with pytest.raises(RuntimeError, match="image_size must be"):
        call(image_size=torch.ones(3, 4))
    with pytest.raises(RuntimeError, match="keep must be bool"):
        call(keep=keep.float())
    with pytest.raises(RuntimeError, match="keep must be"):
        call(keep=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="alpha must be in"):
        call(alpha=1.0)
    with pytest.raises(RuntimeError, match="alpha_next must be in"):
        call(alpha_next=0.0)
    with pytest.raises(RuntimeError, match="alpha_next .* must be >= alpha"):
        call(alpha=0.6, alpha_next=0.3)
    with pytest.raises(RuntimeError, match="eta = 3 is too large"):
        call(eta=3.0)
    with pytest.raises(RuntimeError, match="eta must be >= 0"):
        call(eta=-1.0)
    # eta = 0 allows any direction of time (plain deterministic DDIM inversion).
    call(alpha=0.6, alpha_next=0.3, eta=0.0)


@pytest.mark.parametrize("device", OP_DEVICES)
def test_opcheck(device):
    gen = torch.Generator().manual_seed(0)
    x_t, pred, size, keep, noise, renew = _inputs(3, 9, torch.float32, device, gen, "random")
    torch.library.opcheck(
        op_library(device).box_ddim_step.default,
        (x_t, pred, size, 0.2, 0.5, 1.0, keep, noise, renew),
    )
