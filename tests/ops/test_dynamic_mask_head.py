"""dynamic_mask_head against AdelaiDet's grouped-convolution formulation, forward and backward."""

import pytest
import torch

from idip.ops import (
    dynamic_mask_head,
    dynamic_mask_head_num_params,
    dynamic_mask_head_param_counts,
    split_dynamic_mask_head_params,
)
from idip.ops import reference as ref

from ..conftest import CUDA_DEVICES, EMULATED_CUDA, OP_DEVICES, op_library

STRIDE = 8


def _inputs(
    B, N, H, W, dtype, device, gen, feat_channels=8, channels=8, num_layers=3, rel_coords=True
):
    P = dynamic_mask_head_num_params(feat_channels, channels, num_layers, rel_coords)
    mask_feats = torch.randn(B, feat_channels, H, W, generator=gen, dtype=torch.float64)
    params = torch.randn(N, P, generator=gen, dtype=torch.float64) * 0.5
    im_inds = torch.randint(0, B, (N,), generator=gen)
    locations = torch.rand(N, 2, generator=gen, dtype=torch.float64) * torch.tensor(
        [W * STRIDE, H * STRIDE], dtype=torch.float64
    )
    soi = torch.tensor([16.0, 32.0, 64.0, 128.0], dtype=torch.float64)[
        torch.randint(0, 4, (N,), generator=gen)
    ]
    tensors = [t.to(device) for t in (mask_feats, params, im_inds, locations, soi)]
    for i in (0, 1, 3, 4):
        tensors[i] = tensors[i].to(dtype)
    return tensors, dict(
        mask_stride=STRIDE, channels=channels, num_layers=num_layers, rel_coords=rel_coords
    )


def _run(fn, tensors, kwargs, grad_out):
    feats = tensors[0].detach().clone().requires_grad_(True)
    params = tensors[1].detach().clone().requires_grad_(True)
    out = fn(feats, params, *tensors[2:], **kwargs)
    g_feats, g_params = torch.autograd.grad(out, (feats, params), grad_out)
    return out.detach(), g_feats, g_params


def _assert_close_rel(actual, expected, rtol):
    scale = expected.abs().max().item() if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * max(scale, 1e-6))


def _check_against_reference(tensors, kwargs, dtype, gen):
    N, H, W = tensors[1].shape[0], tensors[0].shape[2], tensors[0].shape[3]
    grad_out = torch.randn(N, 1, H, W, generator=gen, dtype=torch.float64).to(tensors[0])
    got = _run(dynamic_mask_head, tensors, kwargs, grad_out)
    want = _run(ref.dynamic_mask_head, tensors, kwargs, grad_out)
    rtol = 1e-4 if dtype == torch.float32 else 1e-10
    for a, b in zip(got, want):
        assert a.shape == b.shape and a.dtype == b.dtype
        _assert_close_rel(a, b, rtol)


@pytest.mark.parametrize("device", OP_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rel_coords", [True, False])
@pytest.mark.parametrize("B,N,H,W", [(1, 1, 5, 7), (2, 37, 11, 15), (2, 500, 9, 13), (1, 0, 5, 7)])
def test_matches_reference(device, dtype, rel_coords, B, N, H, W):
    gen = torch.Generator().manual_seed(B * 7919 + N * 31 + H)
    tensors, kwargs = _inputs(B, N, H, W, dtype, device, gen, rel_coords=rel_coords)
    _check_against_reference(tensors, kwargs, dtype, gen)


@pytest.mark.parametrize("device", OP_DEVICES)
@pytest.mark.parametrize(
    "feat_channels,channels,num_layers", [(3, 4, 2), (8, 8, 1), (5, 16, 4), (8, 32, 3)]
)
def test_other_widths_and_depths(device, feat_channels, channels, num_layers):
    gen = torch.Generator().manual_seed(feat_channels * 100 + channels * 10 + num_layers)
    tensors, kwargs = _inputs(
        2,
        13,
        7,
        9,
        torch.float64,
        device,
        gen,
        feat_channels=feat_channels,
        channels=channels,
        num_layers=num_layers,
    )
    _check_against_reference(tensors, kwargs, torch.float64, gen)


@pytest.mark.parametrize("device", OP_DEVICES)
@pytest.mark.parametrize("H,W,channels", [(23, 31, 8), (23, 31, 16), (23, 31, 32), (64, 80, 8)])
def test_many_pixels_and_instances(device, H, W, channels):
    """H*W spans several 256-pixel blocks (3 and 20), 40 instances over 2 images: the
    cross-block atomics into the parameter gradients and the shared feature gradients."""
    gen = torch.Generator().manual_seed(H * W + channels)
    dtype = torch.float64 if channels == 8 else torch.float32
    tensors, kwargs = _inputs(2, 40, H, W, dtype, device, gen, channels=channels)
    _check_against_reference(tensors, kwargs, dtype, gen)


@pytest.mark.parametrize("device", CUDA_DEVICES)
def test_backward_is_flagged_nondeterministic(device):
    """The CUDA backward sums with float atomics: under use_deterministic_algorithms it raises,
    as torch's own nondeterministic CUDA kernels do (and roi_align's backward)."""
    gen = torch.Generator().manual_seed(4)
    tensors, kwargs = _inputs(1, 3, 4, 5, torch.float32, device, gen)
    feats, params = (t.requires_grad_(True) for t in tensors[:2])
    out = dynamic_mask_head(feats, params, *tensors[2:], **kwargs)
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with pytest.raises(
            RuntimeError,
            match="dynamic_mask_head_backward .CUDA. does not have a deterministic implementation",
        ):
            out.sum().backward()
    finally:
        torch.use_deterministic_algorithms(before)


@pytest.mark.parametrize("device", CUDA_DEVICES)
def test_parameters_beyond_48_kib_of_shared_memory(device):
    """256 mask channels and width 32: 9377 parameters, whose float64 backward stages 150 KB in
    shared memory, past the 48 KiB a block gets by default (the kernel opts in)."""
    gen = torch.Generator().manual_seed(8)
    tensors, kwargs = _inputs(
        2, 3, 4, 5, torch.float64, device, gen, feat_channels=256, channels=32
    )
    assert tensors[1].shape[1] == 9377
    _check_against_reference(tensors, kwargs, torch.float64, gen)


@pytest.mark.parametrize("device", CUDA_DEVICES)
def test_too_many_parameters_for_shared_memory(device):
    """512 mask channels, width 32, float64: the backward would need 281 KB per block, more than
    an sm_90 block can have (227 KiB): a clear error naming the sizes, not a failed launch."""
    gen = torch.Generator().manual_seed(9)
    tensors, kwargs = _inputs(
        1, 2, 3, 4, torch.float64, device, gen, feat_channels=512, channels=32
    )
    feats, params = (t.requires_grad_(True) for t in tensors[:2])
    out = dynamic_mask_head(feats, params, *tensors[2:], **kwargs)  # 140 KB: fits
    with pytest.raises(
        RuntimeError,
        match=r"17569 parameters per instance \(512 mask channels, "
        r"channels=32.*281104 bytes of shared memory",
    ):
        out.sum().backward()


@pytest.mark.parametrize("rel_coords", [True, False])
@pytest.mark.parametrize("feat_channels,channels,num_layers", [(8, 8, 3), (3, 4, 2), (2, 3, 4)])
def test_gradcheck(rel_coords, feat_channels, channels, num_layers):
    gen = torch.Generator().manual_seed(1)
    tensors, kwargs = _inputs(
        2,
        3,
        3,
        5,
        torch.float64,
        "cpu",
        gen,
        feat_channels=feat_channels,
        channels=channels,
        num_layers=num_layers,
        rel_coords=rel_coords,
    )
    feats, params = (t.requires_grad_(True) for t in tensors[:2])
    rest = tensors[2:]
    assert torch.autograd.gradcheck(
        lambda f, p: dynamic_mask_head(f, p, *rest, **kwargs), (feats, params)
    )


@pytest.mark.parametrize("device", OP_DEVICES)
def test_no_instances(device):
    gen = torch.Generator().manual_seed(0)
    tensors, kwargs = _inputs(2, 0, 5, 7, torch.float32, device, gen)
    feats, params = (t.requires_grad_(True) for t in tensors[:2])
    out = dynamic_mask_head(feats, params, *tensors[2:], **kwargs)
    assert out.shape == (0, 1, 5, 7)
    out.sum().backward()
    assert torch.equal(feats.grad, torch.zeros_like(feats))
    assert params.grad.shape == (0, 169)


def test_num_params_matches_condinst():
    assert dynamic_mask_head_num_params(8) == 169
    assert dynamic_mask_head_num_params(8, rel_coords=False) == 153


def test_param_counts_follow_condinst_layout():
    assert dynamic_mask_head_param_counts(8, 8, 3) == ([80, 64, 8], [8, 8, 1])
    assert dynamic_mask_head_param_counts(8, 8, 3, rel_coords=False) == ([64, 64, 8], [8, 8, 1])
    assert dynamic_mask_head_param_counts(8, 16, 2) == ([160, 16], [16, 1])
    assert dynamic_mask_head_param_counts(3, 8, 1) == ([5], [1])
    for bad in [(8, 8, 0), (8, 0, 3), (-1, 8, 3)]:
        with pytest.raises(ValueError, match="num_layers >= 1, channels >= 1"):
            dynamic_mask_head_param_counts(*bad)
    with pytest.raises(ValueError, match="num_layers >= 1"):
        dynamic_mask_head_num_params(8, num_layers=0)


def test_split_params_weights_first_then_biases_row_major():
    params = torch.arange(2 * 169, dtype=torch.float32).reshape(2, 169)
    weights, biases = split_dynamic_mask_head_params(params, 8, 8, 3)
    assert [w.shape for w in weights] == [(2, 8, 10), (2, 8, 8), (2, 1, 8)]
    assert [b.shape for b in biases] == [(2, 8), (2, 8), (2, 1)]
    assert weights[0][0, 1, 2].item() == 12  # layer 0, out 1, in 2: 1 * 10 + 2
    assert weights[1][0, 0, 0].item() == 80
    assert weights[2][1, 0, 7].item() == 169 + 80 + 64 + 7
    assert biases[0][0, 0].item() == 152
    assert biases[2][0, 0].item() == 168
    weights, biases = split_dynamic_mask_head_params(params[:, :153], 8, 8, 3, rel_coords=False)
    assert weights[0].shape == (2, 8, 8) and biases[2][1, 0].item() == 169 + 152
    with pytest.raises(ValueError, match=r"params must be \[N, 169\]"):
        split_dynamic_mask_head_params(torch.zeros(2, 168), 8, 8, 3)
    with pytest.raises(ValueError, match=r"params must be \[N, 169\]"):
        split_dynamic_mask_head_params(torch.zeros(169), 8, 8, 3)
    with pytest.raises(ValueError, match="num_layers >= 1"):
        split_dynamic_mask_head_params(torch.zeros(2, 0), 8, 8, 0)


def test_hand_computed_pixel():
    # One instance, one 1x1 image, 1 feature channel, 2 layers of width 1 without coordinates:
    # logit = w1 * relu(w0 * f + b0) + b1 = 3 * relu(2 * 1.5 - 1) + 0.5 = 6.5.
    feats = torch.tensor([[[[1.5]]]])
    params = torch.tensor([[2.0, 3.0, -1.0, 0.5]])
    out = dynamic_mask_head(
        feats,
        params,
        torch.tensor([0]),
        torch.zeros(1, 2),
        torch.ones(1),
        8,
        channels=1,
        num_layers=2,
        rel_coords=False,
    )
    torch.testing.assert_close(out, torch.tensor([[[[6.5]]]]))


@pytest.mark.parametrize("device", OP_DEVICES)
def test_rejects_bad_arguments(device):
    gen = torch.Generator().manual_seed(0)
    tensors, kwargs = _inputs(2, 3, 4, 5, torch.float32, device, gen)
    feats, params, im_inds, locations, soi = tensors
    with pytest.raises(ValueError, match=r"params must be \[N, 169\]"):
        dynamic_mask_head(feats, params[:, :150], im_inds, locations, soi, **kwargs)
    with pytest.raises(RuntimeError, match="params must have P = 169 columns"):
        op_library(device).dynamic_mask_head(feats, params[:, :150], im_inds, locations, soi, 8)
    with pytest.raises(RuntimeError, match="soi must be"):
        dynamic_mask_head(feats, params, im_inds, locations, soi[:2], **kwargs)
    with pytest.raises(RuntimeError, match="params must have the dtype of mask_feats"):
        dynamic_mask_head(feats, params.double(), im_inds, locations, soi, **kwargs)


@pytest.mark.parametrize("device", ["cpu", EMULATED_CUDA])
def test_rejects_image_index_out_of_range(device):
    """CPU: a clean error naming the instance. CUDA checks im_inds with a device-side assert
    (no host synchronisation; on a GPU the assert leaves the context unusable, so only the
    emulated device runs it)."""
    gen = torch.Generator().manual_seed(0)
    tensors, kwargs = _inputs(2, 3, 4, 5, torch.float32, device, gen)
    tensors[2] = torch.tensor([0, 2, 1])
    with pytest.raises(RuntimeError, match=r"im_inds\[1\] = 2 is outside \[0, 2\)|b < a.B"):
        dynamic_mask_head(*tensors, **kwargs)


@pytest.mark.parametrize("device", OP_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(device, dtype):
    """float16/bfloat16 inputs (CUDA: float accumulation; CPU: computed in float32)."""
    gen = torch.Generator().manual_seed(3)
    tensors, kwargs = _inputs(2, 37, 11, 15, torch.float32, device, gen)
    low = [t.to(dtype) if t.is_floating_point() else t for t in tensors]
    grad_out = torch.randn(37, 1, 11, 15, generator=gen).to(device)
    got = _run(dynamic_mask_head, low[:2] + tensors[2:], kwargs, grad_out.to(dtype))
    # The reference in float32 on the same (rounded) inputs.
    want = _run(
        ref.dynamic_mask_head, [low[0].float(), low[1].float()] + tensors[2:], kwargs, grad_out
    )
    for a, b in zip(got, want):
        assert a.dtype == dtype
        _assert_close_rel(a.float(), b, 2e-2 if dtype == torch.bfloat16 else 5e-3)


@pytest.mark.parametrize("device", OP_DEVICES)
def test_opcheck(device):
    lib = op_library(device)
    gen = torch.Generator().manual_seed(0)
    tensors, kwargs = _inputs(2, 4, 3, 5, torch.float32, device, gen)
    tensors[0].requires_grad_(True)
    tensors[1].requires_grad_(True)
    torch.library.opcheck(lib.dynamic_mask_head.default, tuple(tensors), kwargs)
    grad = torch.randn(4, 1, 3, 5, generator=gen).to(device)
    args = (grad, *(t.detach() for t in tensors), STRIDE, 8, 3, True)
    torch.library.opcheck(lib.dynamic_mask_head_backward.default, args)
