"""idip's operators: typed Python faces of the ``torch.ops.idip`` kernels in idip._C.

Importing this package loads the extension (or raises an ImportError that says how to rebuild
it). Plain-PyTorch references of every op are in :mod:`idip.ops.reference`.
"""

from ._extension import BUILD_INFO, ExtensionError, has_cuda_kernels
from .box_ddim_step import box_ddim_step
from .box_q_sample import box_q_sample

__all__ = [
    "BUILD_INFO",
    "ExtensionError",
    "has_cuda_kernels",
    "box_q_sample",
    "box_ddim_step",
]
