"""idip's operators: typed Python faces of the ``torch.ops.idip`` kernels in idip._C.

Importing this package loads the extension (or raises an ImportError that says how to rebuild
it). Plain-PyTorch references of every op are in :mod:`idip.ops.reference`. Inside
``with idip.ops.cuda_emulation():`` the ops run the device code of their CUDA kernels on the CPU
(``idip._C_cuda_emu``, built with ``IDIP_CUDA_EMULATION=1``; for tests without a GPU).
"""

from ._extension import (
    BUILD_INFO,
    ExtensionError,
    cuda_emulation,
    has_cuda_kernels,
    load_cuda_emulation,
)
from .aligned_upsample import aligned_upsample
from .box_ddim_step import box_ddim_step
from .box_q_sample import box_q_sample
from .dynamic_mask_head import (
    dynamic_mask_head,
    dynamic_mask_head_num_params,
    dynamic_mask_head_param_counts,
    split_dynamic_mask_head_params,
)
from .multilevel_roi_align import multilevel_roi_align
from .nms import batched_nms, nms
from .roi_align import roi_align

__all__ = [
    "BUILD_INFO",
    "ExtensionError",
    "has_cuda_kernels",
    "cuda_emulation",
    "load_cuda_emulation",
    "roi_align",
    "multilevel_roi_align",
    "nms",
    "batched_nms",
    "aligned_upsample",
    "dynamic_mask_head",
    "dynamic_mask_head_num_params",
    "dynamic_mask_head_param_counts",
    "split_dynamic_mask_head_params",
    "box_q_sample",
    "box_ddim_step",
]
