"""Loads the compiled extension ``idip._C`` and explains clearly when it cannot."""

from __future__ import annotations

import torch

REBUILD_HINT = (
    "rebuild it against the installed torch with `pip install --no-build-isolation -e .` "
    "(or `python setup.py develop`) in the repository root"
)


class ExtensionError(ImportError):
    """idip._C is missing, broken, or was built against another torch."""


def _load():
    try:
        from idip import _C  # noqa: F401  (importing registers the torch.ops.idip kernels)
    except ImportError as err:
        raise ExtensionError(
            f"idip's C++/CUDA extension idip._C could not be loaded ({err}); {REBUILD_HINT}"
        ) from err
    info = _C.build_info()
    built, running = info["torch_version"], torch.__version__
    if built.split("+")[0] != running.split("+")[0]:
        raise ExtensionError(
            f"idip._C was built against torch {built} but torch {running} is installed; {REBUILD_HINT}"
        )
    return info


BUILD_INFO = _load()


def has_cuda_kernels() -> bool:
    """True when idip._C was compiled with its CUDA kernels."""
    return bool(BUILD_INFO["with_cuda"])
