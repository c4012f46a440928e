"""CondInst: FCOS with a controller, a mask branch and the fused dynamic mask head."""

from .condinst import CondInst
from .dynamic_mask_head import DynamicMaskHead
from .fcos import FCOS
from .mask_branch import MaskBranch

__all__ = [
    "CondInst",
    "DynamicMaskHead",
    "FCOS",
    "MaskBranch",
]
