"""Reading weight and checkpoint files without running code from them.

``.pkl`` files (detectron2 / Caffe2 weights) go through an unpickler that only builds numpy
arrays and plain containers; anything else through ``torch.load(weights_only=True)``. Either way
a crafted file cannot execute code, and every failure is a :class:`CheckpointError` naming the
file.
"""

from __future__ import annotations

import _codecs
import os
import pickle
from collections import OrderedDict
from typing import Any

import numpy as np
import torch


class CheckpointError(RuntimeError):
    """A checkpoint or weights file is missing, corrupt or does not fit; the message names it."""


def _numpy_globals() -> dict[tuple[str, str], Any]:
    # NumPy 2 pickles arrays through numpy._core, NumPy 1 through numpy.core; accept both names
    # and resolve them to whatever this NumPy provides, without importing deprecated modules.
    core = getattr(np, "_core", None) or np.core
    allowed: dict[tuple[str, str], Any] = {}
    for package in ("numpy.core", "numpy._core"):
        allowed[(package + ".multiarray", "_reconstruct")] = core.multiarray._reconstruct
        allowed[(package + ".multiarray", "scalar")] = core.multiarray.scalar
        allowed[(package + ".numeric", "_frombuffer")] = core.numeric._frombuffer  # protocol 5
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    # Bytes pickled by Python 3 with protocol <= 2 come back through _codecs.encode(str, "latin1"),
    # a pure string-to-bytes conversion.
    allowed[("_codecs", "encode")] = _codecs.encode
    allowed[("collections", "OrderedDict")] = OrderedDict
    return allowed


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can only build numpy arrays, numpy dtypes/scalars and builtin containers."""

    _allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load the global '{module}.{name}': only numpy arrays and plain "
                "containers are allowed in a weights .pkl"
            ) from None


def _one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: " + " ".join(str(err).split())[:300]


def read_checkpoint(path: str | os.PathLike) -> Any:
    """The object stored in a ``.pkl`` or ``.pth`` file, on the CPU.

    Raises:
        CheckpointError: no such file; unreadable or corrupt; or it asks to build an object
            other than tensors, arrays and containers.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.endswith(".pkl"):
        with open(path, "rb") as f:
            try:
                # latin1 turns Python 2 byte strings (Caffe2-era files) into str keys and bytes.
                return _ArraysOnlyUnpickler(f, encoding="latin1").load()
            except pickle.UnpicklingError as err:
                raise CheckpointError(f"cannot load weights file '{path}': {err}") from None
            except Exception as err:  # noqa: BLE001 - truncated or not a pickle at all
                raise CheckpointError(
                    f"cannot load weights file '{path}': not a readable pickle ({_one_line(err)})"
                ) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - garbage bytes fail in many ways (IndexError, ...)
        raise CheckpointError(
            f"checkpoint file {path} is corrupt or not a torch checkpoint "
            f"(read with torch.load(weights_only=True)): {_one_line(err)}"
        ) from None
