"""nms and batched_nms against the plain-PyTorch reference, torchvision and hand-made cases."""

import pytest
import torch

from idip.ops import batched_nms, nms
from idip.ops import reference as ref

from ..conftest import CUDA_DEVICES, OP_DEVICES, op_library

try:
    import torchvision.ops as tv_ops
except ImportError:
    tv_ops = None

needs_torchvision = pytest.mark.skipif(tv_ops is None, reason="torchvision is not installed")


def make_boxes(n, dtype, device, seed, size=100.0):
    """Clustered random boxes (so that many overlap) and distinct random scores."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.rand(max(n // 8, 1), 2, generator=gen, dtype=torch.float64) * size
    pick = torch.randint(0, centres.shape[0], (n,), generator=gen)
    c = centres[pick] + torch.randn(n, 2, generator=gen, dtype=torch.float64) * 3
    wh = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 20 + 1
    boxes = torch.cat([c - wh / 2, c + wh / 2], dim=1)
    scores = torch.rand(n, generator=gen, dtype=torch.float64)
    return boxes.to(device, dtype), scores.to(device, dtype)


@pytest.mark.parametrize("device", OP_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 7, 64, 65, 300])
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_matches_reference(device, dtype, n, threshold):
    boxes, scores = make_boxes(n, dtype, device, seed=n)
    keep = nms(boxes, scores, threshold)
    assert keep.dtype == torch.int64 and keep.device == boxes.device
    assert torch.equal(keep, ref.nms(boxes, scores, threshold))
    assert (scores[keep][1:] <= scores[keep][:-1]).all()


@needs_torchvision
@pytest.mark.parametrize("device", OP_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threshold", [0.0, 0.5, 0.6, 1.0])
def test_matches_torchvision(device, dtype, threshold):
    boxes, scores = make_boxes(1000, dtype, device, seed=3)
    assert torch.equal(nms(boxes, scores, threshold), tv_ops.nms(boxes, scores, threshold))


@needs_torchvision
@pytest.mark.parametrize("device", OP_DEVICES)
def test_ties_match_torchvision(device):
    """Equal scores and duplicate boxes: torchvision's (CPU) keep set and order, also beyond 100
    boxes (where torch's default sort is no longer stable)."""
    gen = torch.Generator().manual_seed(0)
    base = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10]])
    boxes = (base.repeat(60, 1) + torch.randint(0, 3, (240, 1), generator=gen)).to(device)
    scores = torch.randint(0, 4, (240,), generator=gen).float().to(device)
    for thr in (0.3, 0.5, 0.9):
        keep = nms(boxes, scores, thr)
        assert torch.equal(keep, tv_ops.nms(boxes.cpu(), scores.cpu(), thr).to(device))
        assert torch.equal(keep, ref.nms(boxes, scores, thr))


@pytest.mark.parametrize("device", OP_DEVICES)
def test_iou_equal_to_threshold_is_kept(device):
    # IoU of these two boxes is exactly 50 / 100 = 0.5.
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5]], device=device)
    scores = torch.tensor([0.9, 0.8], device=device)
    assert nms(boxes, scores, 0.5).tolist() == [0, 1]
    assert nms(boxes, scores, 0.49).tolist() == [0]
    # Equal scores: the first index wins.
    assert nms(boxes, torch.tensor([0.5, 0.5], device=device), 0.3).tolist() == [0]


@pytest.mark.parametrize("device", OP_DEVICES)
@pytest.mark.parametrize("dtype, kept", [(torch.float32, [0]), (torch.float64, [0, 1])])
def test_iou_is_compared_with_the_threshold_in_double(device, dtype, kept):
    """IoU 50 / 150 = 1/3 against the threshold 1/3 (a Python float): in float32 the IoU rounds
    up to 0.33333334, above the threshold, so the box is suppressed, as torchvision compares;
    in float64 it equals the threshold and is kept."""
    boxes = torch.tensor([[0.0, 0, 10, 10], [5, 0, 15, 10]], device=device, dtype=dtype)
    scores = torch.tensor([0.9, 0.8], device=device, dtype=dtype)
    assert nms(boxes, scores, 1 / 3).tolist() == kept
    assert (
        batched_nms(boxes, scores, torch.zeros(2, dtype=torch.long, device=device), 1 / 3).tolist()
        == kept
    )
    assert ref.nms(boxes, scores, 1 / 3).tolist() == kept
    if tv_ops is not None:
        assert tv_ops.nms(boxes.cpu(), scores.cpu(), 1 / 3).tolist() == kept


@pytest.mark.parametrize("device", OP_DEVICES)
def test_degenerate_boxes(device):
    """Zero-area boxes have IoU 0/0 = NaN with each other and are never suppressed by them."""
    boxes = torch.tensor(
        [[5.0, 5, 5, 5], [5, 5, 5, 5], [0, 0, 10, 10], [0, 0, 10, 10], [3, 3, 2, 2]], device=device
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5], device=device)
    keep = nms(boxes, scores, 0.5)
    assert keep.tolist() == [0, 1, 2, 4]
    assert torch.equal(keep, ref.nms(boxes, scores, 0.5))
    if tv_ops is not None:
        assert torch.equal(keep, tv_ops.nms(boxes, scores, 0.5))


@pytest.mark.parametrize("device", OP_DEVICES)
def test_empty(device):
    for fn, extra in ((nms, ()), (batched_nms, (torch.zeros(0, dtype=torch.long, device=device),))):
        args = (torch.zeros(0, 4, device=device), torch.zeros(0, device=device), *extra)
        keep = fn(*args, 0.5)
        assert keep.shape == (0,) and keep.dtype == torch.int64


@pytest.mark.parametrize("device", OP_DEVICES)
@pytest.mark.parametrize("n", [5, 200])
def test_batched_matches_reference(device, n):
    boxes, scores = make_boxes(n, torch.float32, device, seed=n + 1)
    idxs = torch.randint(0, 4, (n,), generator=torch.Generator().manual_seed(n)).to(device)
    keep = batched_nms(boxes, scores, idxs, 0.5)
    assert torch.equal(keep, ref.batched_nms(boxes, scores, idxs, 0.5))
    if tv_ops is not None:
        assert torch.equal(keep, tv_ops.batched_nms(boxes, scores, idxs, 0.5))
    # Class-aware: same boxes in distinct classes are all kept.
    same = boxes[:1].repeat(3, 1)
    assert batched_nms(same, scores[:3], torch.arange(3, device=device), 0.5).numel() == 3


@pytest.mark.parametrize("device", OP_DEVICES)
@pytest.mark.parametrize("n, classes", [(3000, 80), (2500, 1), (2100, 7)])
def test_batched_many_boxes_matches_reference(device, n, classes):
    """Past 2048 boxes the CPU kernel scans the classes in parallel; scores with many ties (two
    decimals) check that the merged order is decreasing score with ties in index order."""
    gen = torch.Generator().manual_seed(n)
    boxes, _ = make_boxes(n, torch.float32, device, seed=n, size=300.0)
    scores = (torch.rand(n, generator=gen) * 100).round().div(100).to(device)
    idxs = torch.randint(0, classes, (n,), generator=gen).to(device) * 3 - 5  # any integers
    keep = batched_nms(boxes, scores, idxs, 0.5)
    assert torch.equal(keep, ref.batched_nms(boxes, scores, idxs, 0.5))
    assert 0 < keep.numel() < n


@pytest.mark.parametrize("device", OP_DEVICES)
def test_batched_one_box_per_class_keeps_all_in_score_order(device):
    n = 3000
    gen = torch.Generator().manual_seed(0)
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]]).repeat(n, 1).to(device)  # all the same box
    scores = (torch.rand(n, generator=gen) * 10).round().to(device)  # ties everywhere
    idxs = torch.randperm(n, generator=gen).to(device)
    keep = batched_nms(boxes, scores, idxs, 0.5)
    assert torch.equal(keep, torch.sort(scores, descending=True, stable=True).indices)


@pytest.mark.parametrize("device", OP_DEVICES)
def test_rejects_bad_arguments(device):
    def z(*shape, dtype=torch.float32):
        return torch.zeros(*shape, dtype=dtype, device=device)

    with pytest.raises(RuntimeError, match="boxes must be \\[K, 4\\]"):
        nms(z(3, 5), z(3), 0.5)
    with pytest.raises(RuntimeError, match="scores must be \\[K\\]"):
        nms(z(3, 4), z(2), 0.5)
    with pytest.raises(RuntimeError, match="idxs must be \\[K\\]"):
        batched_nms(z(3, 4), z(3), z(2, dtype=torch.long), 0.5)
    with pytest.raises(RuntimeError, match="idxs must be an integer tensor"):
        batched_nms(z(3, 4), z(3), z(3), 0.5)


@pytest.mark.parametrize("device", CUDA_DEVICES)
@pytest.mark.parametrize("n", [63, 64, 65, 127, 128, 129])
def test_word_boundaries(device, n):
    """Box counts around the 64-box words of the CUDA mask: the last word full, one box short
    and one box over; half of the boxes duplicate the other half so that words suppress across
    their boundaries."""
    boxes, scores = make_boxes(n, torch.float32, "cpu", seed=n, size=40.0)
    boxes[n // 2 :] = boxes[: n - n // 2] + 0.5
    expected = ref.nms(boxes, scores, 0.5)
    assert torch.equal(nms(boxes.to(device), scores.to(device), 0.5).cpu(), expected)
    idxs = torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(n))
    assert torch.equal(
        batched_nms(boxes.to(device), scores.to(device), idxs.to(device), 0.5).cpu(),
        ref.batched_nms(boxes, scores, idxs, 0.5),
    )


@pytest.mark.parametrize("device", CUDA_DEVICES)
@pytest.mark.parametrize("n", [4000, 20000])
def test_cuda_matches_cpu_many_boxes(device, n):
    """Many 64-box words: exercises the device scan, and (for 20k) a long removed-bit row."""
    boxes, scores = make_boxes(n, torch.float32, "cpu", seed=n, size=1000.0)
    expected = torch.ops.idip.nms(boxes, scores, 0.5)  # the CPU kernel
    assert torch.equal(nms(boxes.to(device), scores.to(device), 0.5).cpu(), expected)
    idxs = torch.randint(0, 80, (n,))
    assert torch.equal(
        batched_nms(boxes.to(device), scores.to(device), idxs.to(device), 0.5).cpu(),
        torch.ops.idip.batched_nms(boxes, scores, idxs, 0.5),
    )


@pytest.mark.parametrize("device", CUDA_DEVICES)
@pytest.mark.parametrize("limit", ["0", "24", "32"])
def test_scan_in_global_memory(device, limit, monkeypatch):
    """The scan's removed bits move to global memory past 44 KiB (> 360448 boxes); the
    IDIP_NMS_MAX_SHARED_BYTES knob moves that threshold so the path runs on 200 boxes
    (4 words of removed bits: a limit of 0 or 24 bytes -> global memory; 32 -> shared)."""
    monkeypatch.setenv("IDIP_NMS_MAX_SHARED_BYTES", limit)
    m = 100
    ij = torch.stack([torch.arange(m) % 10, torch.arange(m) // 10], dim=1).float() * 2
    boxes = torch.cat([ij, ij + 1], dim=1).repeat(2, 1)  # disjoint unit boxes, each twice
    scores = torch.cat([torch.rand(m) + 1, torch.rand(m)])
    keep = nms(boxes.to(device), scores.to(device), 0.5).cpu()
    assert torch.equal(keep, torch.sort(scores[:m], descending=True).indices)
    clustered, cscores = make_boxes(200, torch.float32, "cpu", seed=5, size=60.0)
    assert torch.equal(
        nms(clustered.to(device), cscores.to(device), 0.4).cpu(), ref.nms(clustered, cscores, 0.4)
    )


@pytest.mark.parametrize("device", CUDA_DEVICES)
def test_rejects_a_bad_shared_memory_knob(device, monkeypatch):
    monkeypatch.setenv("IDIP_NMS_MAX_SHARED_BYTES", "lots")
    boxes, scores = make_boxes(10, torch.float32, device, seed=0)
    with pytest.raises(RuntimeError, match="IDIP_NMS_MAX_SHARED_BYTES must be a non-negative"):
        nms(boxes, scores, 0.5)


@pytest.mark.parametrize("device", CUDA_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(device, dtype):
    """The CUDA kernels take float16/bfloat16 boxes (IoUs in float32): the keep set of the
    float32 kernel on the same rounded boxes."""
    boxes, scores = make_boxes(300, torch.float32, "cpu", seed=17)
    boxes, scores = boxes.to(dtype), scores.to(dtype)
    expected = ref.nms(boxes.float(), scores.float(), 0.5)
    assert torch.equal(nms(boxes.to(device), scores.to(device), 0.5).cpu(), expected)
    idxs = torch.randint(0, 5, (300,), generator=torch.Generator().manual_seed(1))
    assert torch.equal(
        batched_nms(boxes.to(device), scores.to(device), idxs.to(device), 0.5).cpu(),
        ref.batched_nms(boxes.float(), scores.float(), idxs, 0.5),
    )


@pytest.mark.parametrize("device", OP_DEVICES)
def test_opcheck(device):
    lib = op_library(device)
    boxes, scores = make_boxes(50, torch.float32, device, seed=9)
    idxs = torch.randint(0, 3, (50,)).to(device)
    torch.library.opcheck(lib.nms.default, (boxes, scores, 0.5))
    torch.library.opcheck(lib.batched_nms.default, (boxes, scores, idxs, 0.5))
