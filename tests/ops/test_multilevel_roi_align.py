"""multilevel_roi_align against the per-level loop (reference and torchvision); level rule by hand."""

import pytest
import torch

from idip.ops import multilevel_roi_align, roi_align
from idip.ops import reference as ref

from ..conftest import CUDA_DEVICES, EMULATED_CUDA, OP_DEVICES, op_library
from .test_roi_align import make_rois

try:
    import torchvision.ops as tv_ops
except ImportError:
    tv_ops = None

SCALES = [1 / 8, 1 / 16, 1 / 32]
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-10)}


def make_pyramid(N, C, image_h, image_w, K, dtype, device, seed, scales=SCALES):
    gen = torch.Generator().manual_seed(seed)
    feats = [
        torch.randn(N, C, int(image_h * s), int(image_w * s), generator=gen, dtype=torch.float64)
        for s in scales
    ]
    rois = make_rois(K, N, image_h, image_w, gen)
    return [f.to(device, dtype) for f in feats], rois.to(device, dtype)


@pytest.mark.parametrize("device", OP_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_matches_reference(device, dtype, aligned, sampling_ratio):
    # Small canonical sizes so that the random boxes spread over all three levels.
    feats, rois = make_pyramid(2, 3, 128, 192, 40, dtype, device, seed=sampling_ratio + 3)
    args = (rois, (4, 3), SCALES, sampling_ratio, aligned, 24, 4)
    out = multilevel_roi_align(feats, *args)
    expected = ref.multilevel_roi_align(feats, *args)
    torch.testing.assert_close(out, expected, **TOL[dtype])


@pytest.mark.skipif(tv_ops is None, reason="torchvision is not installed")
@pytest.mark.parametrize("device", OP_DEVICES)
def test_matches_torchvision_per_level(device):
    feats, rois = make_pyramid(2, 4, 256, 320, 60, torch.float32, device, seed=5)
    out = multilevel_roi_align(feats, rois, 7, SCALES, 2, True, 48, 4)
    expected = ref.multilevel_roi_align_loop(
        tv_ops.roi_align, feats, rois, 7, SCALES, 2, True, 48, 4
    )
    torch.testing.assert_close(out, expected, **TOL[torch.float32])


@pytest.mark.parametrize("device", OP_DEVICES)
def test_matches_single_level_when_one_level(device):
    feats, rois = make_pyramid(2, 3, 64, 64, 10, torch.float32, device, seed=2, scales=[1 / 4])
    out = multilevel_roi_align(feats, rois, 5, [1 / 4], 2, True)
    torch.testing.assert_close(out, roi_align(feats[0], rois, 5, 1 / 4, 2, True))


@pytest.mark.parametrize("device", OP_DEVICES)
def test_level_rule_by_hand(device):
    """Each level is a constant map equal to its level number, so the output names the level.

    With canonical 224 at level 4: a 224x224 box -> 4, 112 -> 3, 448 -> 5, 447 -> 4 (floor),
    a point -> clamped to 3, a 2000-pixel box -> clamped to 5, an inverted box (negative area) -> 3.
    """
    feats = [torch.full((1, 1, 256 >> k, 256 >> k), float(k), device=device) for k in (3, 4, 5)]
    boxes = [
        (10, 10, 234, 234),
        (0, 0, 112, 112),
        (0, 0, 448, 448),
        (0, 0, 447, 447),
        (5, 5, 5, 5),
        (0, 0, 2000, 2000),
        (0, 0, 50, -200),
    ]
    rois = torch.tensor([[0.0, *b] for b in boxes], device=device)
    out = multilevel_roi_align(feats, rois, 1, [1 / 8, 1 / 16, 1 / 32], 1, True).cpu()
    # One sample at the box centre: where it falls inside its level's map it reads the level
    # number; the last two boxes' centres lie more than a pixel outside the map and read 0.
    levels = ref.assign_fpn_levels(rois.cpu(), 3, 3, 224, 4) + 3
    assert levels.tolist() == [4, 3, 5, 4, 3, 5, 3]
    inside = out.flatten() != 0
    assert torch.equal(out.flatten()[inside], levels[inside].float())
    assert inside[:4].all()


@pytest.mark.parametrize("device", OP_DEVICES)
def test_gradient_matches_reference(device):
    feats, rois = make_pyramid(2, 2, 64, 96, 25, torch.float64, device, seed=7)
    g = torch.randn(25, 2, 3, 3, dtype=torch.float64, device=device)
    grads = []
    for fn in (multilevel_roi_align, ref.multilevel_roi_align):
        fs = [f.clone().requires_grad_() for f in feats]
        fn(fs, rois, 3, SCALES, -1, True, 14, 4).backward(g)
        # A level no RoI maps to gets no gradient at all from the reference's loop.
        grads.append([torch.zeros_like(f) if f.grad is None else f.grad for f in fs])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


@pytest.mark.parametrize("device", OP_DEVICES)
def test_gradcheck(device):
    feats, rois = make_pyramid(2, 2, 64, 64, 8, torch.float64, device, seed=1)
    feats = [f.requires_grad_() for f in feats]
    assert torch.autograd.gradcheck(
        lambda *fs: multilevel_roi_align(list(fs), rois, 2, SCALES, 2, False, 14, 4), tuple(feats)
    )


@pytest.mark.parametrize("device", OP_DEVICES)
def test_empty_rois(device):
    feats, _ = make_pyramid(2, 3, 64, 64, 0, torch.float32, device, seed=0)
    feats = [f.requires_grad_() for f in feats]
    out = multilevel_roi_align(feats, torch.zeros(0, 5, device=device), 7, SCALES, 2)
    assert out.shape == (0, 3, 7, 7)
    out.sum().backward()
    assert all(torch.equal(f.grad, torch.zeros_like(f)) for f in feats)


def test_rejects_bad_arguments():
    feats, rois = make_pyramid(1, 2, 64, 64, 3, torch.float32, "cpu", seed=0)
    with pytest.raises(RuntimeError, match="consecutive levels"):
        multilevel_roi_align(feats, rois, 2, [1 / 8, 1 / 32, 1 / 64], 2)
    with pytest.raises(RuntimeError, match="not 1/2\\*\\*k"):
        multilevel_roi_align(feats, rois, 2, [1 / 8, 1 / 16, 1 / 30], 2)
    with pytest.raises(ValueError, match="3 feature maps but 2 scales"):
        multilevel_roi_align(feats, rois, 2, [1 / 8, 1 / 16], 2)
    with pytest.raises(RuntimeError, match="batch and channels must agree"):
        multilevel_roi_align([feats[0], feats[1][:, :1], feats[2]], rois, 2, SCALES, 2)
    with pytest.raises(RuntimeError, match="rois must be \\[K, 5\\]"):
        multilevel_roi_align(feats, rois[:, :4], 2, SCALES, 2)


@pytest.mark.parametrize("device", OP_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(device, dtype):
    feats, rois = make_pyramid(2, 8, 128, 128, 50, torch.float32, device, seed=4)
    feats, rois = [f.to(dtype).float() for f in feats], rois.to(dtype).float()  # see test_roi_align
    expected = multilevel_roi_align(feats, rois, 7, SCALES, 2, True, 56, 4)
    fh = [f.to(dtype).requires_grad_() for f in feats]
    out = multilevel_roi_align(fh, rois.to(dtype), 7, SCALES, 2, True, 56, 4)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=2e-2)
    out.float().sum().backward()
    assert all(f.grad.dtype == dtype for f in fh)


@pytest.mark.parametrize("device", OP_DEVICES)
def test_noncontiguous_features_and_strided_gradient(device):
    """Sliced and channels-last levels pool what their contiguous copies pool; a permuted
    incoming gradient gives, by value, the reference's gradients."""
    feats, rois = make_pyramid(2, 3, 128, 160, 30, torch.float64, device, seed=12)
    args = (rois, (3, 4), SCALES, 2, True, 24, 4)
    expected = ref.multilevel_roi_align(feats, *args)
    views = []
    for i, f in enumerate(feats):
        if i == 1:
            views.append(f.to(memory_format=torch.channels_last))
        else:
            wide = torch.zeros(
                f.shape[0], f.shape[1] * 2, f.shape[2], f.shape[3] + 3, dtype=f.dtype, device=device
            )
            wide[:, 1::2, :, 2:-1] = f
            views.append(wide[:, 1::2, :, 2:-1])
    assert not any(v.is_contiguous() for v in views)
    torch.testing.assert_close(multilevel_roi_align(views, *args), expected, **TOL[torch.float64])
    gen = torch.Generator().manual_seed(13)
    g = torch.randn(3, 30, 4, 3, generator=gen, dtype=torch.float64).to(device).permute(1, 0, 3, 2)
    grads = []
    for fn, grad in ((multilevel_roi_align, g), (ref.multilevel_roi_align, g.contiguous())):
        fs = [f.clone().requires_grad_() for f in feats]
        fn(fs, *args).backward(grad)
        grads.append([torch.zeros_like(f) if f.grad is None else f.grad for f in fs])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


@pytest.mark.parametrize("device", OP_DEVICES)
@pytest.mark.parametrize("empty_dim", [2, 3])
def test_level_of_size_zero(device, empty_dim):
    """A coarse FPN level with no rows or no columns (an image smaller than its stride): RoIs
    assigned to it pool zeros and its gradient is an empty tensor; the other levels as usual."""
    gen = torch.Generator().manual_seed(empty_dim)
    shapes = [(2, 3, 12, 10), (2, 3, 6, 5), (2, 3, 3, 0) if empty_dim == 3 else (2, 3, 0, 2)]
    feats = [torch.randn(s, generator=gen, dtype=torch.float64).to(device) for s in shapes]
    rois = make_rois(20, 2, 96, 80, gen).to(device)
    rois[::3, 3:] = rois[::3, 1:3] + 300  # large boxes: the coarsest level
    args = (rois, 2, SCALES, 2, True, 24, 4)
    out = multilevel_roi_align(feats, *args)
    torch.testing.assert_close(out, ref.multilevel_roi_align(feats, *args), **TOL[torch.float64])
    levels = ref.assign_fpn_levels(rois.cpu(), 3, 3, 24, 4)
    assert (levels == 2).any() and torch.equal(
        out[levels.to(out.device) == 2], torch.zeros_like(out[levels.to(out.device) == 2])
    )
    fs = [f.clone().requires_grad_() for f in feats]
    multilevel_roi_align(fs, *args).sum().backward()
    assert fs[2].grad.shape == shapes[2]
    assert fs[0].grad.abs().sum() > 0


@pytest.mark.parametrize("device", ["cpu", EMULATED_CUDA])
def test_rejects_batch_index_out_of_range(device):
    """CPU: the kernel's error. CUDA: no host synchronisation is allowed here, so the kernel
    checks with a device-side assert (which on a GPU leaves the context unusable, so only the
    emulated device runs it)."""
    feats, rois = make_pyramid(1, 2, 64, 64, 3, torch.float32, device, seed=0)
    rois[1, 0] = 1.0
    with pytest.raises(RuntimeError, match="batch index|b >= 0 && b < batch_size"):
        multilevel_roi_align(feats, rois, 2, SCALES, 2)


@pytest.mark.parametrize("device", CUDA_DEVICES)
def test_cuda_matches_cpu(device):
    feats, rois = make_pyramid(2, 16, 256, 384, 300, torch.float32, "cpu", seed=6)
    out_cpu = torch.ops.idip.multilevel_roi_align(feats, rois, 7, 7, SCALES, 2, True, 112, 4)
    out_gpu = multilevel_roi_align(
        [f.to(device) for f in feats], rois.to(device), 7, SCALES, 2, True, 112, 4
    )
    torch.testing.assert_close(out_gpu.cpu(), out_cpu, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", OP_DEVICES)
def test_opcheck(device):
    lib = op_library(device)
    feats, rois = make_pyramid(2, 3, 64, 64, 7, torch.float32, device, seed=3)
    feats = [f.requires_grad_() for f in feats]
    torch.library.opcheck(
        lib.multilevel_roi_align.default,
        (feats, rois, 2, 3, SCALES, 2, True, 28.0, 4),
    )
    g = torch.randn(7, 3, 2, 3, device=device)
    torch.library.opcheck(
        lib.multilevel_roi_align_backward.default,
        (
            g,
            rois,
            2,
            3,
            [f.shape[2] for f in feats],
            [f.shape[3] for f in feats],
            SCALES,
            2,
            True,
            28.0,
            4,
        ),
    )
