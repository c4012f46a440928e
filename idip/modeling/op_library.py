"""The one switch between the compiled kernels and their plain-PyTorch references.

Modules store ``use_reference_ops`` (``MODEL.USE_REFERENCE_OPS``), a bool, and call
``op_library(self.use_reference_ops).<op>(...)`` when they run: holding a Python module object
instead would make the model impossible to deepcopy or pickle (EMA, ``torch.save(model)``).
"""

from __future__ import annotations

from types import ModuleType

import idip.ops
from idip.ops import reference


def op_library(use_reference_ops: bool) -> ModuleType:
    """``idip.ops`` (the compiled kernels) or ``idip.ops.reference`` (same names and signatures)."""
    return reference if use_reference_ops else idip.ops
