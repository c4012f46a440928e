"""``box_ddim_step``: one DDIM update of noisy boxes, fused with DiffusionDet's box renewal."""

from __future__ import annotations

import torch
from torch import Tensor

from . import _extension


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
    """Moves boxes from diffusion time t to the next (less noisy) time and renews dropped boxes.

    Per image b and row n::

        x0    = clamp(cxcywh(pred_boxes / image_size), 0, 1) * 2 - 1
        eps   = (x_t - sqrt(alpha) * x0) / sqrt(1 - alpha)
        sigma = eta * sqrt(1 - alpha / alpha_next) * sqrt((1 - alpha_next) / (1 - alpha))
        c     = sqrt(1 - alpha_next - sigma**2)
        x     = sqrt(alpha_next) * x0 + c * eps + sigma * noise

    then box renewal: the rows with ``keep[b, n]`` move, in their order, to the front of image b
    (K_b of them) and rows K_b..N-1 become ``renew[b, :N-K_b]``. ``boxes_next = to_abs(x_next)``
    (see :func:`idip.ops.box_q_sample`). One kernel launch, no host synchronisation.

    Args:
        x_t: [B, N, 4] current noisy boxes (normalised cxcywh in [-1, 1] units).
        pred_boxes: [B, N, 4] the head's absolute xyxy predictions for x_t, same dtype.
        image_size: [B, 4] (w, h, w, h) of each image, same dtype.
        alpha: alphas_cumprod at the current time, in (0, 1).
        alpha_next: alphas_cumprod at the next time, in (0, 1]; >= alpha when eta > 0.
        eta: DDIM stochasticity (0: deterministic DDIM, 1: DDPM-like), >= 0.
        keep: [B, N] bool, the rows that survive renewal (score above the threshold).
        noise: [B, N, 4] standard normal noise of the update (row n is used by row n).
        renew: [B, N, 4] standard normal boxes for the renewed rows (the first N - K_b are used).

    Returns:
        x_next: [B, N, 4] boxes at the next time (kept rows first, then the renewed ones).
        boxes_next: [B, N, 4] the same boxes in absolute xyxy.
    """
    return _extension.kernels().box_ddim_step(
        x_t, pred_boxes, image_size, alpha, alpha_next, eta, keep, noise, renew
    )


def _fake_box_ddim_step(x_t, pred_boxes, image_size, alpha, alpha_next, eta, keep, noise, renew):
    torch._check(x_t.dim() == 3 and x_t.shape[2] == 4, lambda: "x_t must be [B, N, 4]")
    torch._check(keep.dtype == torch.bool, lambda: "keep must be bool")
    return torch.empty_like(x_t), torch.empty_like(x_t)


@_extension.for_each_library
def _register(namespace: str) -> None:
    torch.library.register_fake(f"{namespace}::box_ddim_step")(_fake_box_ddim_step)
