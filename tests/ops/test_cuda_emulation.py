"""The CPU emulator of the CUDA kernels (csrc/emulation) keeps CUDA's semantics: checked with
small kernels of csrc/emulation/selftest.cpp against values computed here with plain torch."""

import pytest
import torch

pytestmark = pytest.mark.cuda_emu


def selftest(name, x):
    return torch.ops.idip_cuda_emu._runtime_selftest(name, x)


@pytest.fixture
def data():
    return torch.randn(1000, generator=torch.Generator().manual_seed(0))


def test_block_reduction_with_syncthreads(data):
    expected = torch.nn.functional.pad(data, (0, 24)).view(-1, 256).sum(1)
    torch.testing.assert_close(selftest("block_sum", data), expected)


def test_warp_shuffle_reduction_in_2d_blocks(data):
    # Blocks of 40 x 4 threads: warps are consecutive linear thread ids, across rows.
    per_block = torch.nn.functional.pad(data, (0, 1120 - 1000)).view(-1, 160)
    expected = per_block.view(-1, 5, 32).sum(2).flatten()
    torch.testing.assert_close(selftest("warp_sum", data), expected)


def test_shuffle_from_a_lane_that_does_not_exist_is_undefined(data):
    """Blocks of 40 x 3 threads: the fourth warp has 24 lanes, and lane 0's tree reduction reads
    lanes 24-31: the emulator returns NaN for them instead of plausible numbers."""
    got = selftest("warp_sum_partial", data).view(-1, 4)
    per_block = torch.nn.functional.pad(data, (0, 1080 - 1000)).view(-1, 120)
    torch.testing.assert_close(got[:, :3], per_block[:, :96].reshape(-1, 3, 32).sum(2))
    assert torch.isnan(got[:, 3]).all()


def test_ballot(data):
    bits = selftest("ballot", data)
    positive = torch.nn.functional.pad(data > 0, (0, 24)).view(-1, 32).long()
    expected = (positive << torch.arange(32)).sum(1)
    assert torch.equal(bits, expected)


def test_atomics_across_blocks_running_in_parallel():
    x = torch.rand(100_000, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    total, count = selftest("atomic_sum", x).tolist()
    assert count == 100_000
    assert total == pytest.approx(x.sum().item(), rel=1e-12)


def test_dynamic_shared_memory_starts_poisoned():
    assert torch.isnan(selftest("shared_poison", torch.zeros(1))).all()


def test_deadlock_is_reported():
    with pytest.raises(
        RuntimeError,
        match="deadlock_kernel deadlocked in block \\(0, 0, 0\\): of "
        "32 threads, 16 wait at __syncthreads, 16 at a warp",
    ):
        selftest("deadlock", torch.zeros(1))


def test_divergent_syncthreads_is_reported():
    with pytest.raises(RuntimeError, match="divergent __syncthreads in divergent_barrier_kernel"):
        selftest("divergent_barrier", torch.zeros(1))


def test_kernel_assert_names_block_and_thread():
    x = torch.ones(600)
    x[300] = -1.0  # block 1, thread 44
    with pytest.raises(
        RuntimeError,
        match=r"assertion `in\[i\] >= 0.f` failed in assert_kernel, "
        r"block \(1, 0, 0\), thread \(44, 0, 0\)",
    ):
        selftest("assert", x)


def test_dynamic_shared_memory_limit_and_opt_in():
    with pytest.raises(RuntimeError, match="65536 bytes of dynamic shared memory, limit 49152"):
        selftest("shared_default_limit", torch.zeros(1))
    assert selftest("shared_opt_in", torch.zeros(1)).item() == 7.0
