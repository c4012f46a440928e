"""Drawing instance predictions with Pillow: mask overlays, box outlines, "name 0.93" labels.

Each instance has its own colour (two objects of one class are told apart); labels are kept
inside the image and off each other.
"""

from __future__ import annotations

import colorsys
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

# Instance k's hue is k times the golden ratio (mod 1): each new hue falls in the widest gap left
# by the previous ones, so any number of instances get distinct colours, neighbours in the score
# order the most distinct. The start hue is a red, the first instance's colour.
_GOLDEN_RATIO = 0.6180339887498949
_START_HUE = 0.97


def instance_color(rank: int) -> tuple[int, int, int]:
    """The RGB colour of the instance ranked ``rank`` (0: the highest score drawn)."""
    hue = (_START_HUE + rank * _GOLDEN_RATIO) % 1.0
    # Every third cycle darker: hues that come back close after many steps still differ.
    value = 0.95 if (rank // 3) % 2 == 0 else 0.75
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, 0.8, value))


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def place_labels(
    boxes: np.ndarray, sizes: Sequence[tuple[int, int]], image_size: tuple[int, int]
) -> list[tuple[int, int, int, int]]:
    """Chooses where each label is drawn: inside the image and off the labels placed before it.

    Greedy, in the given order (the first label gets the best place). A label tries, in turn:
    above its box's top-left corner, inside it at the top, below the box, inside at the bottom,
    each shifted into the image; then, where all of those overlap earlier labels, it slides down
    (then up) from the first place past the labels in the way. When no place is free it takes the
    first one, overlapping.

    Args:
        boxes: [K,4] xyxy boxes in image coordinates.
        sizes: K (width, height) sizes of the label rectangles, in pixels.
        image_size: (width, height) of the image.

    Returns:
        K rectangles (x0, y0, x1, y1), integer, half-open (x1, y1 excluded). A label wider or
        higher than the image starts at its left or top edge.
    """
    width, height = image_size
    boxes = np.nan_to_num(np.asarray(boxes, dtype=np.float64).reshape(-1, 4))
    placed: list[tuple[int, int, int, int]] = []

    def inside(x: float, y: float, w: int, h: int) -> tuple[int, int, int, int]:
        x = int(round(min(max(x, 0), max(width - w, 0))))
        y = int(round(min(max(y, 0), max(height - h, 0))))
        return (x, y, x + w, y + h)

    def free(rect: tuple[int, int, int, int]) -> bool:
        return not any(_overlaps(rect, other) for other in placed)

    for (x0, y0, x1, y1), (w, h) in zip(boxes, sizes):
        w, h = int(w), int(h)
        tries = [inside(x0, y0 - h, w, h), inside(x0, y0, w, h)]
        tries += [inside(x0, y1, w, h), inside(x0, y1 - h, w, h)]
        chosen = next((rect for rect in tries if free(rect)), None)
        for step in (1, -1):  # slide down, then up, past the labels in the way
            rect = tries[0]
            while chosen is None:
                blocking = [other for other in placed if _overlaps(rect, other)]
                if not blocking:
                    chosen = rect
                    break
                y = max(o[3] for o in blocking) if step > 0 else min(o[1] for o in blocking) - h
                if y < 0 or y + h > height:
                    break
                rect = (rect[0], y, rect[2], y + h)
        placed.append(chosen or tries[0])
    return placed


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
        A new RGB PIL image of the same size; higher-scoring instances are drawn on top;
        instance k in decreasing score order has colour ``instance_color(k)``.
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
    # Rank 0 is the highest score: colours do not depend on the instances below the threshold.
    rank = {int(i): r for r, i in enumerate(reversed(order))}

    for i in order:
        if masks is not None:
            color = np.array(instance_color(rank[i]), dtype=np.float32)
            region = masks[i]
            canvas[region] = canvas[region] * (1.0 - alpha) + color * alpha
    out = Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8))

    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    line = max(1, round(min(height, width) / 250))
    for i in order:
        x0, y0, x1, y1 = boxes[i]
        draw.rectangle([x0, y0, x1, y1], outline=instance_color(rank[i]), width=line)

    # Labels after every outline (no outline crosses a label), placed best score first.
    texts, sizes, offsets = {}, {}, {}
    for i in order:
        name = (
            class_names[labels[i]]
            if class_names and 0 <= labels[i] < len(class_names)
            else f"class {labels[i]}"
        )
        texts[i] = f"{name} {scores[i]:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), texts[i], font=font)
        sizes[i], offsets[i] = (right - left + 2, bottom - top + 2), (left, top)
    by_score = list(reversed(order))
    rects = place_labels(boxes[by_score], [sizes[i] for i in by_score], (width, height))
    for i, (lx0, ly0, lx1, ly1) in reversed(list(zip(by_score, rects))):
        color = instance_color(rank[i])
        draw.rectangle([lx0, ly0, lx1 - 1, ly1 - 1], fill=color)  # PIL includes the far edge
        brightness = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
        draw.text(
            (lx0 + 1 - offsets[i][0], ly0 + 1 - offsets[i][1]),
            texts[i],
            fill=(0, 0, 0) if brightness > 140 else (255, 255, 255),
            font=font,
        )
    return out
