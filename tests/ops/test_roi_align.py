"""roi_align against the plain-PyTorch reference and torchvision; gradients and opcheck."""

import pytest
import torch

from idip.ops import reference as ref
from idip.ops import roi_align

from ..conftest import CUDA_DEVICES, OP_DEVICES, op_library

try:
    import torchvision.ops as tv_ops
except ImportError:  # torchvision is a test-only oracle
    tv_ops = None

needs_torchvision = pytest.mark.skipif(tv_ops is None, reason="torchvision is not installed")


def make_rois(K, N, image_h, image_w, gen, dtype=torch.float64):
    """Random RoIs (batch_index, x1, y1, x2, y2): sizes from sub-pixel to larger than the image,
    some partly outside it."""
    b = torch.randint(0, N, (K,), generator=gen).to(dtype)
    cx = torch.rand(K, generator=gen, dtype=dtype) * image_w * 1.2 - 0.1 * image_w
    cy = torch.rand(K, generator=gen, dtype=dtype) * image_h * 1.2 - 0.1 * image_h
    w = torch.rand(K, generator=gen, dtype=dtype) ** 2 * image_w * 0.9 + 0.1
    h = torch.rand(K, generator=gen, dtype=dtype) ** 2 * image_h * 0.9 + 0.1
    return torch.stack([b, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1)


def make_inputs(N, C, H, W, K, scale, dtype, device, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, generator=gen, dtype=torch.float64)
    rois = make_rois(K, N, H / scale, W / scale, gen)
    return x.to(device, dtype), rois.to(device, dtype)


TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-10)}


@pytest.mark.parametrize("device", OP_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
@pytest.mark.parametrize("output_size", [7, (5, 3)])
def test_matches_reference(device, dtype, aligned, sampling_ratio, output_size):
    x, rois = make_inputs(2, 3, 12, 17, 20, 0.25, dtype, device, seed=sampling_ratio + 7)
    out = roi_align(x, rois, output_size, 0.25, sampling_ratio, aligned)
    expected = ref.roi_align(x, rois, output_size, 0.25, sampling_ratio, aligned)
    torch.testing.assert_close(out, expected, **TOL[dtype])


@needs_torchvision
@pytest.mark.parametrize("device", OP_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 1, 3])
def test_matches_torchvision(device, dtype, aligned, sampling_ratio):
    x, rois = make_inputs(3, 4, 20, 13, 40, 0.5, dtype, device, seed=11)
    out = roi_align(x, rois, (6, 4), 0.5, sampling_ratio, aligned)
    expected = tv_ops.roi_align(x, rois, (6, 4), 0.5, sampling_ratio, aligned)
    torch.testing.assert_close(out, expected, **TOL[dtype])


@needs_torchvision
@pytest.mark.parametrize("aligned", [True, False])
def test_gradient_matches_torchvision(aligned):
    x, rois = make_inputs(2, 3, 10, 11, 15, 0.5, torch.float64, "cpu", seed=3)
    gen = torch.Generator().manual_seed(5)
    g = torch.randn(15, 3, 4, 4, generator=gen, dtype=torch.float64)
    grads = []
    for fn in (roi_align, tv_ops.roi_align):
        xi = x.clone().requires_grad_()
        fn(xi, rois, 4, 0.5, 2, aligned).backward(g)
        grads.append(xi.grad)
    torch.testing.assert_close(grads[0], grads[1], **TOL[torch.float64])


@pytest.mark.parametrize("device", OP_DEVICES)
@pytest.mark.parametrize("aligned", [True, False])
def test_gradient_matches_reference(device, aligned):
    x, rois = make_inputs(2, 3, 9, 14, 12, 0.5, torch.float64, device, seed=21)
    g = torch.randn(12, 3, 3, 5, dtype=torch.float64, device=device)
    grads = []
    for fn in (roi_align, ref.roi_align):
        xi = x.clone().requires_grad_()
        fn(xi, rois, (3, 5), 0.5, -1, aligned).backward(g)
        grads.append(xi.grad)
    torch.testing.assert_close(grads[0], grads[1], **TOL[torch.float64])


@pytest.mark.parametrize("device", OP_DEVICES)
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_gradcheck(device, aligned, sampling_ratio):
    x, rois = make_inputs(2, 2, 6, 7, 5, 0.5, torch.float64, device, seed=1)
    x.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda inp: roi_align(inp, rois, (3, 2), 0.5, sampling_ratio, aligned), (x,)
    )


@pytest.mark.parametrize("device", OP_DEVICES)
def test_empty_rois(device):
    x = torch.randn(2, 3, 8, 8, device=device, requires_grad=True)
    rois = torch.zeros(0, 5, device=device)
    out = roi_align(x, rois, 7, 1.0, 2, True)
    assert out.shape == (0, 3, 7, 7)
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("device", OP_DEVICES)
@pytest.mark.parametrize("aligned", [True, False])
def test_degenerate_rois(device, aligned):
    """Zero-size, inverted, far-outside and border RoIs match torchvision and the reference."""
    x = torch.randn(2, 3, 8, 10, dtype=torch.float64, device=device)
    rois = torch.tensor(
        [
            [0, 4.0, 4.0, 4.0, 4.0],  # a point
            [1, 6.0, 2.0, 3.0, 7.0],  # x2 < x1
            [0, 50.0, 50.0, 60.0, 70.0],  # entirely outside
            [1, -30.0, -20.0, -5.0, -2.0],  # entirely outside (negative side)
            [0, -1.0, -1.0, 11.0, 9.0],  # covers the whole map and a bit more
            [1, 9.5, 7.5, 10.0, 8.0],  # the bottom-right corner
        ],
        dtype=torch.float64,
        device=device,
    )
    for sr in (-1, 2):
        out = roi_align(x, rois, 3, 1.0, sr, aligned)
        torch.testing.assert_close(
            out, ref.roi_align(x, rois, 3, 1.0, sr, aligned), **TOL[torch.float64]
        )
        if tv_ops is not None:
            # torchvision's CPU kernel cannot size its buffers for an inverted RoI with an
            # adaptive (negative) grid, so that one is compared with the reference only.
            rows = [0, 2, 3, 4, 5] if aligned and sr <= 0 else list(range(6))
            torch.testing.assert_close(
                out[rows],
                tv_ops.roi_align(x, rois[rows], 3, 1.0, sr, aligned),
                **TOL[torch.float64],
            )
    # Entirely outside (more than one pixel away): nothing is sampled.
    assert torch.equal(out[2:4], torch.zeros_like(out[2:4]))


def test_constant_map_hand_value():
    """On a constant map every RoI inside the map pools exactly that constant."""
    x = torch.full((1, 2, 6, 6), 3.5, dtype=torch.float64)
    rois = torch.tensor([[0, 0.5, 1.0, 4.0, 5.5], [0, 2.0, 2.0, 2.5, 3.0]], dtype=torch.float64)
    out = roi_align(x, rois, (2, 3), 1.0, 2, True)
    torch.testing.assert_close(out, torch.full_like(out, 3.5))


def test_bilinear_hand_value():
    """A 1x1 bin sampled once at the centre of a 2x2 ramp: the mean of the four pixels."""
    x = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]], dtype=torch.float64)
    rois = torch.tensor([[0, 0.5, 0.5, 1.5, 1.5]], dtype=torch.float64)  # aligned: -> [0, 1]^2
    out = roi_align(x, rois, 1, 1.0, 1, True)
    torch.testing.assert_close(out, torch.tensor([[[[1.5]]]], dtype=torch.float64))


@pytest.mark.parametrize("device", OP_DEVICES)
def test_noncontiguous_input(device):
    """channels-last and sliced features, a strided view of the rois: the contiguous results."""
    x, rois = make_inputs(2, 4, 9, 9, 10, 1.0, torch.float64, device, seed=4)
    expected = ref.roi_align(x, rois, 4, 1.0, 2, True)
    wide = torch.randn(2, 8, 9, 11, dtype=x.dtype, device=device)
    wide[:, ::2, :, 1:10] = x
    padded_rois = torch.zeros(10, 7, dtype=rois.dtype, device=device)
    padded_rois[:, 1:6] = rois
    for xi in (x.to(memory_format=torch.channels_last), wide[:, ::2, :, 1:10]):
        for ri in (rois, padded_rois[:, 1:6]):
            assert not (xi.is_contiguous() and ri.is_contiguous())
            torch.testing.assert_close(
                roi_align(xi, ri, 4, 1.0, 2, True), expected, **TOL[torch.float64]
            )


@pytest.mark.parametrize("device", OP_DEVICES)
def test_strided_incoming_gradient(device):
    """The backward reads a non-contiguous gradient by its strides: the same input gradient as
    for its contiguous copy, checked by value against the reference."""
    x, rois = make_inputs(2, 3, 9, 14, 12, 0.5, torch.float64, device, seed=23)
    gen = torch.Generator().manual_seed(6)
    g_t = torch.randn(3, 12, 5, 4, generator=gen, dtype=torch.float64).to(device)
    g = g_t.permute(1, 0, 3, 2)  # [K, C, 4, 5], strides of neither layout
    assert not g.is_contiguous()
    grads = []
    for fn, grad in ((roi_align, g), (ref.roi_align, g.contiguous())):
        xi = x.clone().requires_grad_()
        fn(xi, rois, (4, 5), 0.5, 2, True).backward(grad)
        grads.append(xi.grad)
    torch.testing.assert_close(grads[0], grads[1], **TOL[torch.float64])


@pytest.mark.parametrize("device", OP_DEVICES)
def test_rejects_bad_arguments(device):
    x = torch.randn(1, 2, 5, 5, device=device)
    with pytest.raises(RuntimeError, match="rois must be \\[K, 5\\]"):
        roi_align(x, torch.zeros(3, 4, device=device), 2, 1.0)
    with pytest.raises(RuntimeError, match="input must be \\[N, C, H, W\\]"):
        roi_align(x[0], torch.zeros(3, 5, device=device), 2, 1.0)
    with pytest.raises(RuntimeError, match="rois .* must have the dtype"):
        roi_align(x, torch.zeros(3, 5, dtype=torch.float64, device=device), 2, 1.0)
    with pytest.raises(RuntimeError, match="output_size must be positive"):
        roi_align(x, torch.zeros(1, 5, device=device), (0, 2), 1.0)


@pytest.mark.parametrize("device", OP_DEVICES)
@pytest.mark.parametrize("batch_index", [3.0, 1.0, -1.0, float("nan")])
def test_rejects_batch_index_out_of_range(device, batch_index):
    """A clean error on every device, forward and backward (on a GPU the index is checked before
    the launch: a device-side assert would leave the CUDA context unusable)."""
    x = torch.randn(1, 2, 5, 5, device=device)
    rois = torch.tensor([[0.0, 0, 0, 2, 2], [batch_index, 1, 1, 3, 3]], device=device)
    with pytest.raises(RuntimeError, match="batch index"):
        roi_align(x, rois, 2, 1.0)
    lib = op_library(device)
    with pytest.raises(RuntimeError, match="batch index"):
        lib.roi_align_backward(
            torch.ones(2, 2, 2, 2, device=device), rois, [1, 2, 5, 5], 1.0, 2, True
        )


@pytest.mark.parametrize("device", OP_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(device, dtype):
    """float16/bfloat16 on every device (CPU: pooled in float32; CUDA: fp32 accumulation)."""
    x, rois = make_inputs(2, 8, 16, 16, 30, 0.5, torch.float32, device, seed=8)
    # The oracle: float32 pooling of the same (rounded) inputs. bfloat16 rois move by up to
    # 1/16 pixel here, which moves the samples, so unrounded float32 inputs are no oracle.
    x, rois = x.to(dtype).float(), rois.to(dtype).float()
    expected = roi_align(x, rois, 5, 0.5, 2, True)
    xh = x.to(dtype).requires_grad_()
    out = roi_align(xh, rois.to(dtype), 5, 0.5, 2, True)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=2e-2)
    g = torch.randn_like(expected)
    x32 = x.clone().requires_grad_()
    roi_align(x32, rois, 5, 0.5, 2, True).backward(g)
    out.backward(g.to(dtype))
    torch.testing.assert_close(xh.grad.float(), x32.grad, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("device", CUDA_DEVICES)
def test_cuda_matches_cpu(device):
    x, rois = make_inputs(2, 16, 25, 38, 200, 1 / 16, torch.float32, "cpu", seed=9)
    out_cpu = torch.ops.idip.roi_align(x, rois, 7, 7, 1 / 16, 2, True)  # the CPU kernel
    out_gpu = roi_align(x.to(device), rois.to(device), 7, 1 / 16, 2, True)
    torch.testing.assert_close(out_gpu.cpu(), out_cpu, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", OP_DEVICES)
def test_opcheck(device):
    lib = op_library(device)
    x, rois = make_inputs(2, 3, 8, 9, 6, 0.5, torch.float32, device, seed=2)
    x.requires_grad_()
    torch.library.opcheck(lib.roi_align.default, (x, rois, 3, 2, 0.5, 2, True))
    torch.library.opcheck(lib.roi_align.default, (x, rois, 2, 2, 0.5, -1, False))
    g = torch.randn(6, 3, 3, 2, device=device)
    torch.library.opcheck(lib.roi_align_backward.default, (g, rois, [2, 3, 8, 9], 0.5, 2, True))


@pytest.mark.parametrize("device", CUDA_DEVICES)
@pytest.mark.parametrize("warn_only", [False, True])
def test_cuda_backward_is_flagged_nondeterministic(device, warn_only):
    """The CUDA backward scatters with float atomics: use_deterministic_algorithms raises (or
    warns, with warn_only), as for torch's own nondeterministic kernels."""
    x, rois = make_inputs(1, 2, 6, 6, 4, 1.0, torch.float32, device, seed=0)
    x.requires_grad_()
    out = roi_align(x, rois, 2, 1.0, 2, True)
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=warn_only)
    try:
        if warn_only:
            with pytest.warns(
                UserWarning,
                match="roi_align_backward .CUDA. does not have a deterministic implementation",
            ):
                out.sum().backward()
        else:
            with pytest.raises(
                RuntimeError,
                match="roi_align_backward .CUDA. does not have a deterministic implementation",
            ):
                out.sum().backward()
    finally:
        torch.use_deterministic_algorithms(before)
