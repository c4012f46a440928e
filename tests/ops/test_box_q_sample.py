"""box_q_sample against its reference on random inputs, on every device."""

import pytest
import torch

from idip.ops import box_q_sample
from idip.ops import reference as ref

from ..conftest import CUDA_DEVICES, EMULATED_CUDA, OP_DEVICES, op_library


def _inputs(B, N, dtype, device, gen):
    T = 1000
    x_start = (torch.rand(B, N, 4, generator=gen, dtype=torch.float64) * 2.4 - 1.2).to(dtype)
    noise = torch.randn(B, N, 4, generator=gen, dtype=torch.float64).to(dtype)
    t = torch.randint(0, T, (B,), generator=gen)
    alphas_cumprod = torch.linspace(0.9999, 1e-4, T, dtype=torch.float64)
    wh = torch.randint(16, 1400, (B, 2), generator=gen).to(dtype)
    image_size = torch.cat([wh, wh], dim=1)
    return [x.to(device) for x in (x_start, noise, t, alphas_cumprod, image_size)]


@pytest.mark.parametrize("device", OP_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B,N", [(1, 100), (4, 300), (16, 500), (3, 0)])
def test_matches_reference(device, dtype, B, N):
    gen = torch.Generator().manual_seed(B * 1000 + N)
    args = _inputs(B, N, dtype, device, gen)
    x_t, boxes = box_q_sample(*args)
    x_t_ref, boxes_ref = ref.box_q_sample(*args)
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(x_t, x_t_ref, **tol)
    torch.testing.assert_close(boxes, boxes_ref, **tol)


@pytest.mark.parametrize("device", OP_DEVICES)
def test_extreme_times_and_degenerate_boxes(device):
    T = 1000
    ac = torch.linspace(0.9999, 1e-4, T, dtype=torch.float64, device=device)
    # A zero-size box, a box far outside the image, and a box already at the border.
    x_start = torch.tensor(
        [[[0.0, 0.0, -1.0, -1.0], [5.0, -5.0, 3.0, 3.0], [1.0, 1.0, 1.0, 1.0]]], device=device
    ).repeat(2, 1, 1)
    noise = torch.zeros_like(x_start)
    t = torch.tensor([0, T - 1], device=device)
    size = torch.tensor([[640.0, 480.0, 640.0, 480.0]], device=device).repeat(2, 1)
    x_t, boxes = box_q_sample(x_start, noise, t, ac, size)
    x_t_ref, boxes_ref = ref.box_q_sample(x_start, noise, t, ac, size)
    torch.testing.assert_close(boxes, boxes_ref)
    torch.testing.assert_close(x_t, x_t_ref)
    assert (boxes[..., 2] >= boxes[..., 0]).all() and (boxes[..., 3] >= boxes[..., 1]).all()
    assert (boxes >= 0).all() and (boxes <= size[:, None]).all()
    # The zero-size box keeps the minimum width of 1e-4 of the image (centred at 0.5).
    torch.testing.assert_close(
        boxes[0, 0], torch.tensor([319.968, 239.976, 320.032, 240.024], device=device)
    )


@pytest.mark.parametrize("device", ["cpu", EMULATED_CUDA])
def test_rejects_time_outside_schedule(device):
    """CPU: a clean error naming t. CUDA checks t with a device-side assert (reading t on the host
    would synchronise; on a GPU the assert leaves the context unusable, so only the emulated
    device runs it)."""
    ac = torch.linspace(0.9999, 1e-4, 10, dtype=torch.float64)
    x = torch.zeros(1, 2, 4)
    with pytest.raises(RuntimeError, match=r"t\[0\] = 10 is outside \[0, 10\)|step < T"):
        box_q_sample(x, x, torch.tensor([10]), ac, torch.ones(1, 4))


def test_rejects_bad_shapes():
    ac = torch.linspace(0.9999, 1e-4, 10, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="x_start must be"):
        box_q_sample(torch.zeros(2, 4), torch.zeros(2, 4), torch.tensor([0]), ac, torch.ones(1, 4))


@pytest.mark.parametrize("device", OP_DEVICES)
def test_opcheck(device):
    gen = torch.Generator().manual_seed(0)
    args = _inputs(2, 7, torch.float32, device, gen)
    torch.library.opcheck(op_library(device).box_q_sample.default, args)


@pytest.mark.parametrize("device", OP_DEVICES)
def test_empty_batch_and_non_contiguous_inputs(device):
    ac = torch.linspace(0.9999, 1e-4, 10, dtype=torch.float64, device=device)
    z = torch.zeros(0, 5, 4, device=device)
    x_t, boxes = box_q_sample(
        z, z, torch.zeros(0, dtype=torch.int64, device=device), ac, torch.ones(0, 4, device=device)
    )
    assert x_t.shape == (0, 5, 4) and boxes.shape == (0, 5, 4)

    gen = torch.Generator().manual_seed(21)
    args = _inputs(3, 40, torch.float32, device, gen)
    strided = [a.transpose(0, 1).contiguous().transpose(0, 1) if a.dim() == 3 else a for a in args]
    strided[4] = args[4].t().contiguous().t()
    assert not strided[0].is_contiguous() and not strided[4].is_contiguous()
    for got, expected in zip(box_q_sample(*strided), ref.box_q_sample(*args)):
        torch.testing.assert_close(got, expected)


def test_rejects_negative_time_and_mixed_dtypes():
    ac = torch.linspace(0.9999, 1e-4, 10, dtype=torch.float64)
    x = torch.zeros(2, 3, 4)
    size = torch.ones(2, 4)
    with pytest.raises(RuntimeError, match=r"t\[1\] = -1 is outside \[0, 10\)"):
        box_q_sample(x, x, torch.tensor([0, -1]), ac, size)
    with pytest.raises(RuntimeError, match="must share a dtype"):
        box_q_sample(x, x.double(), torch.tensor([0, 1]), ac, size)
    with pytest.raises(RuntimeError, match="t must be int64"):
        box_q_sample(x, x, torch.tensor([0, 1], dtype=torch.int32), ac, size)
    with pytest.raises(RuntimeError, match="image_size must be"):
        box_q_sample(x, x, torch.tensor([0, 1]), ac, torch.ones(2, 2))


@pytest.mark.parametrize("device", CUDA_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_matches_float32_reference(device, dtype):
    gen = torch.Generator().manual_seed(17)
    args = _inputs(4, 300, torch.float32, device, gen)
    low = [a.to(dtype) if a.is_floating_point() and a.dim() != 1 else a for a in args]
    x_t, boxes = box_q_sample(*low)
    back = [a.float() if a.is_floating_point() and a.dim() != 1 else a for a in low]
    # the kernel reads alphas_cumprod in the input dtype, as the reference does
    back[3] = args[3].to(dtype).double()
    x_ref, boxes_ref = ref.box_q_sample(*back)
    assert x_t.dtype == dtype and boxes.dtype == dtype
    tol = 1e-2 if dtype == torch.float16 else 6e-2
    torch.testing.assert_close(x_t.float(), x_ref, rtol=tol, atol=tol)
    torch.testing.assert_close(boxes.float(), boxes_ref, rtol=tol, atol=tol * 1400)
