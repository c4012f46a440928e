"""aligned_upsample against CondInst's pad/interpolate/pad/crop formulation, forward and backward."""

import pytest
import torch

from idip.ops import aligned_upsample
from idip.ops import reference as ref

from ..conftest import CUDA_DEVICES, OP_DEVICES, op_library


def _forward_backward(fn, x, factor, grad_out):
    x = x.detach().clone().requires_grad_(True)
    y = fn(x, factor)
    (grad,) = torch.autograd.grad(y, x, grad_out)
    return y.detach(), grad


@pytest.mark.parametrize("device", OP_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("factor", [1, 2, 4, 8])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 1, 1, 1), (3, 2, 1, 6)])
def test_matches_reference(device, dtype, factor, shape):
    gen = torch.Generator().manual_seed(factor * 100 + sum(shape))
    x = torch.randn(*shape, generator=gen, dtype=dtype).to(device)
    out_shape = (shape[0], shape[1], shape[2] * factor, shape[3] * factor)
    grad_out = torch.randn(*out_shape, generator=gen, dtype=dtype).to(device)
    y, gx = _forward_backward(aligned_upsample, x, factor, grad_out)
    y_ref, gx_ref = _forward_backward(ref.aligned_upsample, x, factor, grad_out)
    assert y.shape == out_shape
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(y, y_ref, **tol)
    torch.testing.assert_close(gx, gx_ref, **tol)


@pytest.mark.parametrize("device", OP_DEVICES)
def test_non_power_of_two_factor(device):
    x = torch.randn(2, 2, 4, 6, dtype=torch.float64, device=device)
    torch.testing.assert_close(aligned_upsample(x, 3), ref.aligned_upsample(x, 3))


@pytest.mark.parametrize("device", OP_DEVICES)
@pytest.mark.parametrize("factor", [1, 2, 3, 4, 8])
def test_gradcheck(device, factor):
    # Small inputs: the slow-mode check runs one backward per output element.
    x = torch.randn(1, 2, 2, 3, dtype=torch.float64, device=device, requires_grad=True)
    op = op_library(device).aligned_upsample  # the kernel itself, also for factor 1
    assert torch.autograd.gradcheck(lambda t: op(t, factor), (x,))


@pytest.mark.parametrize("device", OP_DEVICES)
def test_gradgradcheck(device):
    x = torch.randn(1, 1, 2, 3, dtype=torch.float64, device=device, requires_grad=True)
    op = op_library(device).aligned_upsample
    assert torch.autograd.gradgradcheck(lambda t: op(t, 2), (x,))


@pytest.mark.parametrize("device", OP_DEVICES)
def test_factor_one_is_identity(device):
    x = torch.randn(2, 3, 4, 5, device=device)
    assert aligned_upsample(x, 1) is x
    torch.testing.assert_close(op_library(device).aligned_upsample(x, 1), x, rtol=0, atol=0)


@pytest.mark.parametrize("device", OP_DEVICES)
def test_noncontiguous_input_and_gradient(device):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 5, 7, 3, generator=gen, dtype=torch.float64).to(device).permute(0, 3, 1, 2)
    g = torch.randn(2, 14, 3, 10, generator=gen, dtype=torch.float64).to(device).permute(0, 2, 3, 1)
    assert not x.is_contiguous() and not g.is_contiguous()
    y, gx = _forward_backward(aligned_upsample, x, 2, g)
    y_ref, gx_ref = _forward_backward(ref.aligned_upsample, x.contiguous(), 2, g.contiguous())
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-12, atol=1e-12)


def test_hand_computed_values():
    # 1-d along x: [0, 4] with factor 2 -> resized taps j = max(o - 1, 0) -> [0, 0, 2, 4].
    x = torch.tensor([[[[0.0, 4.0]]]])
    torch.testing.assert_close(aligned_upsample(x, 2)[0, 0, 0], torch.tensor([0.0, 0.0, 2.0, 4.0]))


@pytest.mark.parametrize("device", OP_DEVICES)
def test_empty_batch(device):
    x = torch.zeros(0, 3, 4, 5, device=device, requires_grad=True)
    y = aligned_upsample(x, 2)
    assert y.shape == (0, 3, 8, 10)
    y.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("device", CUDA_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_on_cuda(device, dtype):
    x = torch.randn(2, 4, 9, 13, device=device).to(dtype)
    g = torch.randn(2, 4, 18, 26, device=device).to(dtype)
    y, gx = _forward_backward(aligned_upsample, x, 2, g)
    y_ref, gx_ref = _forward_backward(ref.aligned_upsample, x.float(), 2, g.float())
    assert y.dtype == dtype and gx.dtype == dtype
    tol = dict(rtol=1e-2, atol=1e-2) if dtype == torch.float16 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(y.float(), y_ref, **tol)
    torch.testing.assert_close(gx.float(), gx_ref, **tol)


@pytest.mark.parametrize("device", OP_DEVICES)
def test_rejects_bad_arguments(device):
    lib = op_library(device)
    with pytest.raises(ValueError, match="factor must be an integer >= 1"):
        aligned_upsample(torch.zeros(1, 1, 2, 2, device=device), 0)
    with pytest.raises(ValueError, match="x must be"):
        aligned_upsample(torch.zeros(1, 2, 2, device=device), 2)
    with pytest.raises(RuntimeError, match="factor must be an integer >= 1"):
        lib.aligned_upsample(torch.zeros(1, 1, 2, 2, device=device), 0)
    with pytest.raises(RuntimeError, match="grad must be"):
        lib.aligned_upsample_backward(torch.zeros(1, 1, 4, 4, device=device), 2, 3, 2)


@pytest.mark.parametrize("device", OP_DEVICES)
def test_opcheck(device):
    lib = op_library(device)
    x = torch.randn(2, 3, 5, 7, device=device, requires_grad=True)
    torch.library.opcheck(lib.aligned_upsample.default, (x, 2))
    g = torch.randn(2, 3, 20, 28, device=device, requires_grad=True)
    torch.library.opcheck(lib.aligned_upsample_backward.default, (g, 4, 5, 7))
