"""idip's operators: typed Python faces of the ``torch.ops.idip`` kernels in idip._C.

Importing this package loads the extension (or raises an ImportError that says how to rebuild
it). Plain-PyTorch references of every op are in :mod:`idip.ops.reference`.
"""

from ._extension import BUILD_INFO, ExtensionError, has_cuda_kernels
from .aligned_upsample import aligned_upsample
from .box_ddim_step import box_ddim_step
from .box_q_sample import box_q_sample
from .dynamic_mask_head import dynamic_mask_head, dynamic_mask_head_num_params
from .multilevel_roi_align import multilevel_roi_align
from .nms import batched_nms, nms
from .roi_align import roi_align

__all__ = [
    "BUILD_INFO",
    "ExtensionError",
    "has_cuda_kernels",
    "roi_align",
    "multilevel_roi_align",
    "nms",
    "batched_nms",
    "aligned_upsample",
    "dynamic_mask_head",
    "dynamic_mask_head_num_params",
    "box_q_sample",
    "box_ddim_step",
]
