"""``box_q_sample``: the forward diffusion of normalised boxes, fused with their conversion to xyxy."""

from __future__ import annotations

import torch
from torch import Tensor

from . import _extension


def box_q_sample(
    x_start: Tensor, noise: Tensor, t: Tensor, alphas_cumprod: Tensor, image_size: Tensor
) -> tuple[Tensor, Tensor]:
    """Noises boxes to diffusion time ``t`` and returns them in absolute xyxy as well.

    ``x_t = sqrt(a_t) * x_start + sqrt(1 - a_t) * noise`` with ``a_t = alphas_cumprod[t]`` (read in
    the dtype of ``x_start``), and ``boxes = to_abs(x_t)``: ``clamp((x + 1) / 2, 0, 1)``, width and
    height at least 1e-4, cxcywh -> xyxy, clipped to [0, 1], times ``image_size``.

    Args:
        x_start: [B, N, 4] normalised cxcywh boxes scaled to [-1, 1].
        noise: [B, N, 4] standard normal noise.
        t: [B] int64 diffusion times in [0, T).
        alphas_cumprod: [T] float32/float64 cumulative products of the schedule's alphas.
        image_size: [B, 4] (w, h, w, h) of each image, same dtype as ``x_start``.

    Returns:
        x_t: [B, N, 4] noised boxes (normalised cxcywh in [-1, 1] units).
        boxes: [B, N, 4] absolute xyxy boxes.
    """
    return _extension.kernels().box_q_sample(x_start, noise, t, alphas_cumprod, image_size)


def _fake_box_q_sample(x_start, noise, t, alphas_cumprod, image_size):
    torch._check(x_start.dim() == 3 and x_start.shape[2] == 4, lambda: "x_start must be [B, N, 4]")
    return torch.empty_like(x_start), torch.empty_like(x_start)


@_extension.for_each_library
def _register(namespace: str) -> None:
    torch.library.register_fake(f"{namespace}::box_q_sample")(_fake_box_q_sample)
