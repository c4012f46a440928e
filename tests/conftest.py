"""Shared test fixtures: device parametrisation and the CUDA marker."""

from __future__ import annotations

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


CUDA_READY = _cuda_ready()


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA GPU and idip._C built with CUDA kernels")
    for item in items:
        if "cuda" in item.keywords and not CUDA_READY:
            item.add_marker(skip)


# Parametrise a test over devices with `@pytest.mark.parametrize("device", DEVICES)`;
# the CUDA case carries the `cuda` marker so `pytest -m cuda` selects exactly the GPU tests.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param
