"""Pasting fixed-size RoI mask probabilities into the full image, vectorised over boxes.

The result equals detectron2's ``paste_masks_in_image`` (bilinear ``grid_sample`` of the S x S
mask at each image pixel centre, ``align_corners=False``, zero outside the mask, thresholded),
computed separably: ``out[k] = Wy[k] @ mask[k] @ Wx[k]^T`` where ``Wy`` [H, S] and ``Wx`` [W, S]
hold the 1-D bilinear weights. Memory is O(K (H S + W S + H W)) per chunk of boxes.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Boxes pasted per chunk: bounds the [chunk, H, W] float intermediate.
_PASTE_CHUNK = 64


def _bilinear_weights(lo: Tensor, hi: Tensor, length: int, size: int) -> Tensor:
    """1-D bilinear sampling matrix: [K] box extents -> [K, length, size].

    Row ``p`` samples the mask at image coordinate ``p + 0.5`` mapped into the box, with
    grid_sample's align_corners=False convention and zeros outside.
    """
    k = lo.shape[0]
    pix = torch.arange(length, device=lo.device, dtype=lo.dtype) + 0.5
    extent = (hi - lo).clamp(min=1e-6)
    u = (pix[None, :] - lo[:, None]) / extent[:, None] * size - 0.5  # [K, length] mask coordinates
    u0 = u.floor()
    frac = u - u0
    weights = torch.zeros(k, length, size + 2, device=lo.device, dtype=lo.dtype)
    # Shift by one so that index -1 and size land in padding columns that are then dropped.
    i0 = (u0 + 1).clamp(0, size + 1).long()
    i1 = (u0 + 2).clamp(0, size + 1).long()
    weights.scatter_add_(2, i0[..., None], (1 - frac)[..., None])
    weights.scatter_add_(2, i1[..., None], frac[..., None])
    return weights[:, :, 1 : size + 1]


def paste_masks_in_image(
    masks: Tensor, boxes: Tensor, height: int, width: int, threshold: float = 0.5
) -> Tensor:
    """Pastes RoI mask probabilities into an image of ``height`` x ``width``.

    Args:
        masks: [K, S, S] probabilities (or [K, 1, S, S]).
        boxes: [K, 4] xyxy boxes in the output image's coordinates.
        height, width: output size.
        threshold: probability at or above which a pixel is foreground; a negative value returns
            the soft [K, H, W] probabilities instead of a bool mask.

    Returns:
        [K, height, width] bool (or float when threshold < 0).
    """
    if masks.dim() == 4:
        masks = masks[:, 0]
    if masks.dim() != 3 or masks.shape[1] != masks.shape[2]:
        raise ValueError(f"masks must be [K, S, S], got {tuple(masks.shape)}")
    if boxes.shape != (masks.shape[0], 4):
        raise ValueError(f"boxes must be [{masks.shape[0]}, 4], got {tuple(boxes.shape)}")
    k, s = masks.shape[0], masks.shape[1]
    soft = threshold < 0
    out = torch.empty(
        (k, height, width), dtype=masks.dtype if soft else torch.bool, device=masks.device
    )
    masks = masks.float()
    boxes = boxes.float()
    for start in range(0, k, _PASTE_CHUNK):
        m = masks[start : start + _PASTE_CHUNK]
        b = boxes[start : start + _PASTE_CHUNK]
        wy = _bilinear_weights(b[:, 1], b[:, 3], height, s)  # [k, H, S]
        wx = _bilinear_weights(b[:, 0], b[:, 2], width, s)  # [k, W, S]
        pasted = torch.bmm(torch.bmm(wy, m), wx.transpose(1, 2))
        out[start : start + _PASTE_CHUNK] = pasted if soft else pasted >= threshold
    return out
