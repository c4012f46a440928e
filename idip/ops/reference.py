"""Plain-PyTorch reference implementations of every ``idip.ops`` op.

These are the oracles the tests compare the kernels with on random inputs, the baselines of the
benchmarks, and what ``MODEL.USE_REFERENCE_OPS`` runs. They are written the way the anchors
(torchvision, detectron2, AdelaiDet, DiffusionDet) compute the same thing, for clarity rather
than speed. Each section belongs to one group of ops.
"""

from __future__ import annotations

import torch
from torch import Tensor

# ================================================================================================
# RoIAlign and NMS (ops 1-3)
# ================================================================================================

# ================================================================================================
# CondInst: aligned upsampling and the dynamic mask head (ops 4-5)
# ================================================================================================

# ================================================================================================
# Diffusion box scheduling (ops 6-7)
# ================================================================================================


def box_to_abs(x: Tensor, image_size: Tensor) -> Tensor:
    """to_abs of DESIGN.md: [B, N, 4] normalised cxcywh in [-1, 1] -> [B, N, 4] absolute xyxy.

    ``image_size`` is [B, 4] (w, h, w, h).
    """
    c = ((x + 1) / 2).clamp(0, 1)
    cx, cy = c[..., 0], c[..., 1]
    w, h = c[..., 2].clamp(min=1e-4), c[..., 3].clamp(min=1e-4)
    xyxy = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)
    return xyxy.clamp(0, 1) * image_size[:, None, :]


def box_q_sample(
    x_start: Tensor, noise: Tensor, t: Tensor, alphas_cumprod: Tensor, image_size: Tensor
) -> tuple[Tensor, Tensor]:
    """Reference of :func:`idip.ops.box_q_sample` (DiffusionDet's q_sample + box conversion)."""
    a = alphas_cumprod.to(x_start.dtype)[t][:, None, None]
    x_t = a.sqrt() * x_start + (1 - a).sqrt() * noise
    return x_t, box_to_abs(x_t, image_size)
