"""SegmentedBatchNorm2d against one nn.BatchNorm2d call per segment (IDIP's authors' loop)."""

import pytest
import torch
from torch import nn

from idip.modeling.segmented_batch_norm import SegmentedBatchNorm2d


def _pair(c, momentum=0.1):
    ours, ref = (
        SegmentedBatchNorm2d(c, momentum=momentum).double(),
        nn.BatchNorm2d(c, momentum=momentum).double(),
    )
    with torch.no_grad():
        for bn in (ours, ref):
            bn.weight.copy_(torch.linspace(0.5, 1.5, c))
            bn.bias.copy_(torch.linspace(-1, 1, c))
            bn.running_mean.copy_(torch.linspace(-0.3, 0.3, c))
            bn.running_var.copy_(torch.linspace(0.5, 2.0, c))
    return ours, ref


@pytest.mark.parametrize(
    "segments, num_segments",
    [
        ([0, 0, 1, 1, 1], 2),
        ([2, 0, 2, 0, 0, 2], 4),  # unsorted rows; segments 1 and 3 empty
        ([1], 3),
    ],
)
@pytest.mark.parametrize("momentum", [0.1, 0.3])
def test_matches_a_batch_norm_call_per_segment(segments, num_segments, momentum):
    gen = torch.Generator().manual_seed(len(segments))
    x = torch.randn(len(segments), 3, 5, 4, generator=gen, dtype=torch.float64) * 2 + 1
    g = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    seg = torch.tensor(segments)
    ours, ref = _pair(3, momentum)
    xa = x.clone().requires_grad_()
    out = ours(xa, seg, num_segments)
    out.backward(g)
    xb = x.clone().requires_grad_()
    expected = torch.empty_like(x)
    for s in range(num_segments):  # in segment order, skipping empty segments
        rows = (seg == s).nonzero().squeeze(1)
        if rows.numel():
            expected[rows] = ref(xb[rows])
    expected.backward(g)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(xa.grad, xb.grad)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad)
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    torch.testing.assert_close(ours.running_var, ref.running_var)
    assert ours.num_batches_tracked.item() == ref.num_batches_tracked.item() == len(set(segments))


def test_eval_mode_and_no_segments_are_plain_batch_norm():
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    ours, ref = _pair(3)
    torch.testing.assert_close(ours(x), ref(x))  # training, no segments: one batch
    ours.eval(), ref.eval()
    torch.testing.assert_close(ours(x, torch.tensor([0, 0, 1, 1]), 2), ref(x))
    assert set(ours.state_dict()) == set(ref.state_dict())
