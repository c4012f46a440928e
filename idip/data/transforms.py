"""Geometric augmentations: shortest-edge resize with a long-side cap, horizontal flip.

A :class:`GeometricTransform` is sampled once per image (from an explicit ``random.Random``, so
augmentations are reproducible) and then applied to the image, its boxes and its masks alike.
Pixel-centre conventions match between the three: the image is resized by Pillow (bilinear,
centre-aligned), masks with ``nearest-exact`` (centre-aligned), boxes are scaled by the same
factors, and a flip maps x to ``width - x`` for boxes and column j to ``width - 1 - j`` for pixels.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ..config import ConfigError


def resized_shape(height: int, width: int, short_edge: int, max_size: int) -> tuple[int, int]:
    """Output (height, width) when the short side becomes ``short_edge`` and the long side is
    capped at ``max_size`` (``max_size <= 0``: no cap). Rounds to the nearest integer."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got height={height}, width={width}")
    scale = short_edge / min(height, width)
    if max_size > 0 and max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return max(int(height * scale + 0.5), 1), max(int(width * scale + 0.5), 1)


def sample_short_edge(min_sizes: Sequence[int], sampling: str, rng: random.Random) -> int:
    """Draws the training short side: ``"choice"`` of ``min_sizes`` or ``"range"`` (inclusive)
    between its two values."""
    sizes = [int(s) for s in min_sizes]
    if not sizes:
        raise ConfigError(
            "config key 'INPUT.MIN_SIZE_TRAIN' is empty: give at least one short-side size"
        )
    if sampling == "choice":
        return sizes[rng.randrange(len(sizes))]
    if sampling == "range":
        if len(sizes) != 2 or sizes[0] > sizes[1]:
            raise ConfigError(
                "config key 'INPUT.MIN_SIZE_TRAIN_SAMPLING' 'range' needs MIN_SIZE_TRAIN=(low, high), "
                f"got {tuple(sizes)}"
            )
        return rng.randint(sizes[0], sizes[1])
    raise ConfigError(
        f"config key 'INPUT.MIN_SIZE_TRAIN_SAMPLING' must be 'choice' or 'range', got {sampling!r}"
    )


@dataclass(frozen=True)
class GeometricTransform:
    """Resize from (in_height, in_width) to (out_height, out_width), then optionally flip."""

    in_height: int
    in_width: int
    out_height: int
    out_width: int
    hflip: bool = False

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """uint8 [H, W, 3] -> uint8 [out_height, out_width, 3]."""
        if image.shape[:2] != (self.in_height, self.in_width):
            raise ValueError(
                f"image of size {image.shape[:2]} given to a transform for "
                f"{(self.in_height, self.in_width)}"
            )
        if (self.out_height, self.out_width) != (self.in_height, self.in_width):
            image = np.asarray(
                Image.fromarray(image).resize((self.out_width, self.out_height), Image.BILINEAR)
            )
        if self.hflip:
            image = image[:, ::-1]
        return np.ascontiguousarray(image)

    def apply_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """float [G, 4] xyxy in the input image -> [G, 4] xyxy in the output image (clipped)."""
        sx, sy = self.out_width / self.in_width, self.out_height / self.in_height
        out = boxes * boxes.new_tensor([sx, sy, sx, sy])
        if self.hflip:
            out = torch.stack(
                [self.out_width - out[:, 2], out[:, 1], self.out_width - out[:, 0], out[:, 3]],
                dim=1,
            )
        out[:, 0::2] = out[:, 0::2].clamp(0, self.out_width)
        out[:, 1::2] = out[:, 1::2].clamp(0, self.out_height)
        return out

    def apply_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """bool [G, H, W] -> bool [G, out_height, out_width].

        Nearest neighbour with pixel centres aligned (output pixel i reads input pixel
        floor((i + 0.5) * in / out)), as torch's "nearest-exact"; done with numpy indexing, which
        is much faster than torch for a few small masks.
        """
        if masks.shape[1:] != (self.in_height, self.in_width):
            raise ValueError(
                f"masks of size {tuple(masks.shape[1:])} given to a transform for "
                f"{(self.in_height, self.in_width)}"
            )
        array = masks.numpy()
        rows = _nearest_source(self.in_height, self.out_height)
        cols = _nearest_source(self.in_width, self.out_width)
        if self.hflip:
            cols = cols[::-1]
        return torch.from_numpy(np.ascontiguousarray(array[:, rows[:, None], cols[None, :]]))


def _nearest_source(in_size: int, out_size: int) -> np.ndarray:
    """Index of the input pixel whose centre is nearest each output pixel's centre, int64 [out]."""
    source = np.floor((np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size)).astype(
        np.int64
    )
    return np.minimum(source, in_size - 1)


@dataclass(frozen=True)
class ResizeFlipAugmentation:
    """Training augmentation: random short side (see :func:`sample_short_edge`), long side capped at
    ``max_size``, horizontal flip with probability ``flip_prob``."""

    min_sizes: tuple[int, ...]
    sampling: str
    max_size: int
    flip_prob: float

    @classmethod
    def from_config(cls, cfg, is_train: bool) -> "ResizeFlipAugmentation":
        if is_train:
            flip = cfg.INPUT.RANDOM_FLIP
            if flip not in ("horizontal", "none"):
                raise ConfigError(
                    f"config key 'INPUT.RANDOM_FLIP' must be 'horizontal' or 'none', got {flip!r}"
                )
            min_sizes = cfg.INPUT.MIN_SIZE_TRAIN
            min_sizes = (
                (min_sizes,) if isinstance(min_sizes, int) else tuple(int(s) for s in min_sizes)
            )
            aug = cls(
                min_sizes,
                cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING,
                int(cfg.INPUT.MAX_SIZE_TRAIN),
                0.5 if flip == "horizontal" else 0.0,
            )
            sample_short_edge(
                aug.min_sizes, aug.sampling, random.Random(0)
            )  # validates the settings now
            return aug
        return cls((int(cfg.INPUT.MIN_SIZE_TEST),), "choice", int(cfg.INPUT.MAX_SIZE_TEST), 0.0)

    def sample(self, height: int, width: int, rng: random.Random) -> GeometricTransform:
        """Draws the transform of one image of size (height, width)."""
        short = sample_short_edge(self.min_sizes, self.sampling, rng)
        if short > 0:
            out_h, out_w = resized_shape(height, width, short, self.max_size)
        else:  # a short side of 0 disables resizing (MIN_SIZE_TEST = 0)
            out_h, out_w = height, width
        hflip = self.flip_prob > 0 and rng.random() < self.flip_prob
        return GeometricTransform(height, width, out_h, out_w, hflip)
