"""Plain-PyTorch reference implementations of every ``idip.ops`` op.

These are the oracles the tests compare the kernels with on random inputs, the baselines of the
benchmarks, and what ``MODEL.USE_REFERENCE_OPS`` runs. They are written the way the anchors
(torchvision, detectron2, AdelaiDet, DiffusionDet) compute the same thing, for clarity rather
than speed. Each section belongs to one group of ops.
"""

from __future__ import annotations

import math

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


def box_ddim_step(
    x_t: Tensor,
    pred_boxes: Tensor,
    image_size: Tensor,
    alpha: float,
    alpha_next: float,
    eta: float,
    keep: Tensor,
    noise: Tensor,
    renew: Tensor,
) -> tuple[Tensor, Tensor]:
    """Reference of :func:`idip.ops.box_ddim_step`: DiffusionDet's ddim_sample step with box
    renewal, one image at a time (boolean indexing, then concatenation of fresh boxes)."""
    sigma = 0.0 if eta == 0 else (
        eta * math.sqrt(1 - alpha / alpha_next) * math.sqrt((1 - alpha_next) / (1 - alpha)))
    c = math.sqrt(max(1 - alpha_next - sigma**2, 0.0))
    n = x_t.shape[1]
    x_next = []
    for b in range(x_t.shape[0]):
        xyxy = pred_boxes[b] / image_size[b]
        cxcywh = torch.stack(
            [(xyxy[:, 0] + xyxy[:, 2]) / 2, (xyxy[:, 1] + xyxy[:, 3]) / 2,
             xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1]], dim=-1)
        x0 = cxcywh.clamp(0, 1) * 2 - 1
        eps = (x_t[b] - math.sqrt(alpha) * x0) / math.sqrt(1 - alpha)
        kb = keep[b]
        x_kept = math.sqrt(alpha_next) * x0[kb] + c * eps[kb] + sigma * noise[b][kb]
        x_next.append(torch.cat([x_kept, renew[b, : n - x_kept.shape[0]]], dim=0))
    x_next = torch.stack(x_next) if x_next else torch.empty_like(x_t)
    return x_next, box_to_abs(x_next, image_size)
