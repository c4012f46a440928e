"""Shared test fixtures: device parametrisation, the CUDA marker and the emulated CUDA device."""

from __future__ import annotations

import json
import os

import pytest
import torch


def _cuda_ready() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        from idip.ops import has_cuda_kernels
    except ImportError:
        return False
    return has_cuda_kernels()


def _emulation_ready() -> bool:
    try:
        from idip.ops import load_cuda_emulation
    except ImportError:
        return False
    return load_cuda_emulation()


CUDA_READY = _cuda_ready()
EMULATION_READY = _emulation_ready()


class EmulatedCuda(str):
    """The device id ``cuda-emu``: tensors live on the CPU ("cpu" as a string, so ``.to(device)``
    works) and, for the duration of the test, the ops run their CUDA kernels' device code on the
    CPU (``idip._C_cuda_emu``, built with ``IDIP_CUDA_EMULATION=1``)."""

    def __new__(cls):
        return super().__new__(cls, "cpu")

    def __repr__(self) -> str:
        return "cuda-emu"


CUDA_EMU = EmulatedCuda()

# Parametrise a test over devices with `@pytest.mark.parametrize("device", DEVICES)`;
# the CUDA case carries the `cuda` marker so `pytest -m cuda` selects exactly the GPU tests.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
# The tests of the kernels (tests/ops) also run every CUDA case on the emulated device.
EMULATED_CUDA = pytest.param(CUDA_EMU, marks=pytest.mark.cuda_emu, id="cuda-emu")
CUDA_DEVICES = [pytest.param("cuda", marks=pytest.mark.cuda), EMULATED_CUDA]
OP_DEVICES = ["cpu", *CUDA_DEVICES]


def runs_cuda_kernels(device) -> bool:
    """True for the devices whose ops run the kernels of csrc/cuda (a GPU, or emulated)."""
    return isinstance(device, EmulatedCuda) or str(device).startswith("cuda")


def op_library(device):
    """The op namespace that serves `device` (for direct torch.ops calls and opcheck)."""
    return torch.ops.idip_cuda_emu if isinstance(device, EmulatedCuda) else torch.ops.idip


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU and idip._C built with CUDA kernels")
    skip_emu = pytest.mark.skip(
        reason="idip._C_cuda_emu is not built (IDIP_CUDA_EMULATION=1 pip install "
        "--no-build-isolation -e .)"
    )
    for item in items:
        if "cuda" in item.keywords and not CUDA_READY:
            item.add_marker(skip_cuda)
        if "cuda_emu" in item.keywords and not EMULATION_READY:
            item.add_marker(skip_emu)


@pytest.fixture(autouse=True)
def _cuda_emulation_for_the_emulated_device(request):
    """Runs a test parametrised with the `cuda-emu` device inside idip.ops.cuda_emulation()."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and any(isinstance(v, EmulatedCuda) for v in callspec.params.values()):
        from idip.ops import cuda_emulation

        with cuda_emulation():
            yield
    else:
        yield


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


# ---- The count CI checks: emulated CUDA tests that passed vs `cuda`-marked kernel tests --------
_counts = {"cuda_emu_passed": 0, "cuda_emu_not_passed": [], "cuda_op_tests": 0}


def pytest_collection_finish(session):
    _counts["cuda_op_tests"] = sum(
        1
        for item in session.items
        if "cuda" in item.keywords and item.nodeid.startswith("tests/ops/")
    )


def pytest_runtest_logreport(report):
    if "cuda_emu" not in report.keywords:
        return
    if report.when == "call" and report.passed:
        _counts["cuda_emu_passed"] += 1
    elif report.failed or report.skipped:
        _counts["cuda_emu_not_passed"].append(f"{report.nodeid} ({report.outcome})")


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("IDIP_EMULATION_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump(_counts, f, indent=1)
