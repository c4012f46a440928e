"""Padding a list of differently sized images into one batch tensor."""

from __future__ import annotations

import torch


def batch_images(
    images: list[torch.Tensor], size_divisibility: int, pad_value: float = 0.0
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Pads images at the bottom/right to a common size and stacks them.

    Args:
        images: B tensors [C, H_i, W_i] with the same C, dtype and device.
        size_divisibility: the padded height and width are rounded up to a multiple of this
            (0 or 1: no rounding, just the largest image).
        pad_value: value written into the padding.

    Returns:
        (batch [B, C, Hp, Wp], image_sizes) where image_sizes[i] = (H_i, W_i), the unpadded size.
    """
    if not isinstance(images, (list, tuple)) or len(images) == 0:
        raise ValueError("batch_images: 'images' must be a non-empty list of [C, H, W] tensors")
    if size_divisibility < 0:
        raise ValueError(f"batch_images: 'size_divisibility' must be >= 0, got {size_divisibility}")
    first = images[0]
    for i, image in enumerate(images):
        if not isinstance(image, torch.Tensor) or image.dim() != 3:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"batch_images: images[{i}] must be a [C, H, W] tensor, got {shape}")
        if (
            image.shape[0] != first.shape[0]
            or image.dtype != first.dtype
            or image.device != first.device
        ):
            raise ValueError(
                f"batch_images: images[{i}] has channels/dtype/device "
                f"{image.shape[0]}/{image.dtype}/"
                f"{image.device}, images[0] has {first.shape[0]}/{first.dtype}/{first.device}"
            )
    image_sizes = [(int(im.shape[1]), int(im.shape[2])) for im in images]
    max_h = max(h for h, _ in image_sizes)
    max_w = max(w for _, w in image_sizes)
    if size_divisibility > 1:
        max_h = (max_h + size_divisibility - 1) // size_divisibility * size_divisibility
        max_w = (max_w + size_divisibility - 1) // size_divisibility * size_divisibility
    batch = first.new_full((len(images), first.shape[0], max_h, max_w), pad_value)
    for i, image in enumerate(images):
        batch[i, :, : image.shape[1], : image.shape[2]].copy_(image)
    return batch, image_sizes
