"""The extension loads, reports how it was built, and registers every op of the contract."""

import pytest
import torch

import idip.ops
from idip.ops import _extension

# Every op of the contract (docs/design.md) that has landed in idip._C.
REGISTERED_OPS = [
    "box_q_sample",
    "box_ddim_step",
    "roi_align",
    "roi_align_backward",
    "multilevel_roi_align",
    "multilevel_roi_align_backward",
    "nms",
    "batched_nms",
    "aligned_upsample",
    "aligned_upsample_backward",
    "dynamic_mask_head",
    "dynamic_mask_head_backward",
]


def test_build_info_matches_torch():
    info = idip.ops.BUILD_INFO
    assert info["torch_version"].split("+")[0] == torch.__version__.split("+")[0]
    assert isinstance(info["with_cuda"], bool)


@pytest.mark.parametrize("name", REGISTERED_OPS)
def test_op_registered_on_cpu(name):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"idip::{name}", "CPU")


@pytest.mark.parametrize("name", REGISTERED_OPS)
def test_op_registered_on_cuda_when_built_with_cuda(name):
    if not idip.ops.has_cuda_kernels():
        pytest.skip("idip._C was built without CUDA kernels")
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"idip::{name}", "CUDA")


def test_version_mismatch_names_rebuild_command(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "1.0.0")
    with pytest.raises(_extension.ExtensionError, match="pip install --no-build-isolation -e ."):
        _extension._load()


def test_missing_extension_names_rebuild_command(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, globals=None, locals=None, fromlist=(), level=0):
        if name == "idip" and fromlist and "_C" in fromlist:
            raise ImportError("No module named 'idip._C'")
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(_extension.ExtensionError, match="could not be loaded.*pip install"):
        _extension._load()


@pytest.mark.cuda_emu
@pytest.mark.parametrize("name", REGISTERED_OPS)
def test_emulated_library_has_every_op_with_the_same_schema(name):
    """idip._C_cuda_emu registers every op of csrc/cuda for CPU tensors, schema for schema."""
    ours = str(getattr(torch.ops.idip, name).default._schema)
    emulated = str(getattr(torch.ops.idip_cuda_emu, name).default._schema)
    assert ours.startswith(f"idip::{name}(")
    assert emulated.replace("idip_cuda_emu::", "idip::", 1) == ours
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"idip_cuda_emu::{name}", "CPU")


@pytest.mark.cuda_emu
def test_cuda_emulation_switches_the_wrappers_and_restores_them():
    assert _extension.kernels() is torch.ops.idip
    with idip.ops.cuda_emulation():
        assert _extension.kernels() is torch.ops.idip_cuda_emu
    assert _extension.kernels() is torch.ops.idip
