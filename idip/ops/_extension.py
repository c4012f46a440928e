"""Loads the compiled extension ``idip._C`` and explains clearly when it cannot.

Also the switch to the CPU emulation of the CUDA kernels (``idip._C_cuda_emu``, built with
``IDIP_CUDA_EMULATION=1``): the op wrappers call :func:`kernels`, which is ``torch.ops.idip``
except inside :func:`cuda_emulation`, where it is ``torch.ops.idip_cuda_emu`` (the same schemas,
CPU tensors, the device code of ``csrc/cuda``). Fake kernels and autograd formulas are
registered for each loaded library through :func:`for_each_library`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

REBUILD_HINT = (
    "rebuild it against the installed torch with `pip install --no-build-isolation -e .` "
    "(or `python setup.py develop`) in the repository root"
)
EMULATION_LIBRARY = "idip_cuda_emu"


class ExtensionError(ImportError):
    """idip._C is missing, broken, or was built against another torch."""


def _check_torch_version(module: str, info: dict) -> None:
    built, running = info["torch_version"], torch.__version__
    if built.split("+")[0] != running.split("+")[0]:
        raise ExtensionError(
            f"idip.{module} was built against torch {built} but torch {running} is installed; "
            f"{REBUILD_HINT}"
        )


def _load():
    try:
        from idip import _C  # noqa: F401  (importing registers the torch.ops.idip kernels)
    except ImportError as err:
        raise ExtensionError(
            f"idip's C++/CUDA extension idip._C could not be loaded ({err}); {REBUILD_HINT}"
        ) from err
    info = _C.build_info()
    _check_torch_version("_C", info)
    return info


BUILD_INFO = _load()

_libraries: list[str] = ["idip"]
_registrars: list[Callable[[str], None]] = []
_active = "idip"


def has_cuda_kernels() -> bool:
    """True when idip._C was compiled with its CUDA kernels."""
    return bool(BUILD_INFO["with_cuda"])


def for_each_library(register: Callable[[str], None]) -> Callable[[str], None]:
    """Calls ``register(namespace)`` for ``idip`` now, and for the emulation when it loads."""
    _registrars.append(register)
    for namespace in _libraries:
        register(namespace)
    return register


def kernels():
    """The op library the wrappers call: ``torch.ops.idip``, or the emulation's."""
    return getattr(torch.ops, _active)


def load_cuda_emulation() -> bool:
    """Loads ``idip._C_cuda_emu`` (False when it was not built) and registers its ops' Python side."""
    if EMULATION_LIBRARY in _libraries:
        return True
    try:
        from idip import _C_cuda_emu
    except ModuleNotFoundError:
        return False
    except ImportError as err:  # built, but it does not load: say why rather than skip
        raise ExtensionError(
            f"idip._C_cuda_emu could not be loaded ({err}); {REBUILD_HINT}"
        ) from err
    _check_torch_version("_C_cuda_emu", _C_cuda_emu.build_info())
    _libraries.append(EMULATION_LIBRARY)
    for register in _registrars:
        register(EMULATION_LIBRARY)
    return True


@contextlib.contextmanager
def cuda_emulation() -> Iterator[None]:
    """Within this block the ops run their CUDA kernels' code on the CPU (CPU tensors).

    For tests on machines without a GPU: checks logic, never speed.
    """
    global _active
    if not load_cuda_emulation():
        raise ExtensionError(
            "idip._C_cuda_emu is not built: rebuild with IDIP_CUDA_EMULATION=1 "
            "`pip install --no-build-isolation -e .`"
        )
    previous, _active = _active, EMULATION_LIBRARY
    try:
        yield
    finally:
        _active = previous
