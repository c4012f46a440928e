"""Drawing instance predictions with Pillow: mask overlays, box outlines, "name 0.93" labels."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

# A fixed palette of distinct, saturated colours (RGB); class k uses PALETTE[k % len(PALETTE)].
PALETTE = np.array(
    [
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
        [250, 190, 212],
        [0, 128, 128],
        [220, 190, 255],
        [170, 110, 40],
        [255, 250, 200],
        [128, 0, 0],
        [170, 255, 195],
        [128, 128, 0],
        [255, 215, 180],
        [0, 0, 128],
        [128, 128, 128],
    ],
    dtype=np.uint8,
)


def color_of(label: int) -> tuple[int, int, int]:
    """The RGB colour used for class ``label``."""
    return tuple(int(c) for c in PALETTE[int(label) % len(PALETTE)])


def _to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def draw_instances(
    image: np.ndarray | Image.Image,
    predictions: dict,
    class_names: Sequence[str] | None = None,
    score_threshold: float = 0.0,
    alpha: float = 0.5,
) -> Image.Image:
    """Draws the predictions of one image.

    Args:
        image: uint8 RGB image, [H,W,3] array or PIL image.
        predictions: ``boxes`` [K,4] xyxy, ``scores`` [K], ``labels`` [K] and optionally
            ``masks`` [K,H,W] bool, all in the image's coordinates (tensors or arrays).
        class_names: names indexed by label; "class {k}" when absent or too short.
        score_threshold: instances scoring below it are not drawn.
        alpha: opacity of the mask overlay (0: invisible, 1: opaque).

    Returns:
        A new RGB PIL image of the same size; higher-scoring instances are drawn on top.
    """
    canvas = np.array(
        image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32
    )
    if canvas.ndim != 3 or canvas.shape[2] != 3:
        raise ValueError(f"image must be [H,W,3] RGB, got shape {canvas.shape}")
    height, width = canvas.shape[:2]
    scores = _to_numpy(predictions["scores"]).astype(np.float64).reshape(-1)
    boxes = _to_numpy(predictions["boxes"]).astype(np.float64).reshape(-1, 4)
    labels = _to_numpy(predictions["labels"]).astype(np.int64).reshape(-1)
    masks = predictions.get("masks")
    masks = _to_numpy(masks).astype(bool) if masks is not None else None
    if masks is not None and masks.shape[0] and masks.shape[1:] != (height, width):
        raise ValueError(f"masks have size {masks.shape[1:]}, the image {(height, width)}")
    order = [i for i in np.argsort(scores, kind="stable") if scores[i] >= score_threshold]

    for i in order:
        if masks is not None:
            color = np.array(color_of(labels[i]), dtype=np.float32)
            region = masks[i]
            canvas[region] = canvas[region] * (1.0 - alpha) + color * alpha
    out = Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8))

    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    line = max(1, round(min(height, width) / 250))
    for i in order:
        color = color_of(labels[i])
        x0, y0, x1, y1 = boxes[i]
        draw.rectangle([x0, y0, x1, y1], outline=color, width=line)
        name = (
            class_names[labels[i]]
            if class_names and 0 <= labels[i] < len(class_names)
            else f"class {labels[i]}"
        )
        text = f"{name} {scores[i]:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top
        ty = y0 - th - 2 if y0 - th - 2 >= 0 else y0  # above the box, or inside when at the top
        draw.rectangle([x0, ty, x0 + tw + 2, ty + th + 2], fill=color)
        brightness = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
        draw.text(
            (x0 + 1 - left, ty + 1 - top),
            text,
            fill=(0, 0, 0) if brightness > 140 else (255, 255, 255),
            font=font,
        )
    return out
