"""COCO segmentations (polygons, RLE) checked before pycocotools sees them, and decoded.

pycocotools trusts its input: a polygon vertex of NaN, inf or 1e30 makes it allocate tens of GB,
and an RLE whose runs do not add up to its size makes it write past its buffer. Training and
evaluation both go through :func:`clean_segmentation` first, so that a bad annotation is a counted
warning, never a crash or a process killed for memory.
"""

from __future__ import annotations

import math

import numpy as np

# An RLE may be a little off the image size (exporters that resized, off-by-one sizes); it is
# cropped or padded to the image. Sizes beyond this factor are refused: decoding them would
# allocate memory out of proportion to the image.
_MAX_RLE_SIZE_FACTOR = 2


def decode_rle_string(counts: str) -> list[int]:
    """Run lengths of a COCO compressed RLE string (pycocotools' own encoding).

    Each run is written in 5-bit groups, least significant first, as characters offset by 48;
    bit 0x20 of a character says another group follows, bit 0x10 of the last group is the sign;
    from the third run on, the value is a difference to the run two before.

    Raises:
        ValueError: a character outside the encoding or a run that does not end.
    """
    runs: list[int] = []
    i, n = 0, len(counts)
    while i < n:
        value, shift, more = 0, 0, True
        while more:
            if i >= n:
                raise ValueError("the RLE string ends inside a run")
            c = ord(counts[i]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"character {counts[i]!r} is not part of an RLE string")
            value |= (c & 0x1F) << (5 * shift)
            more = bool(c & 0x20)
            i += 1
            shift += 1
            if not more and (c & 0x10):
                value |= -1 << (5 * shift)
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def _clean_polygons(
    polygons, height: int, width: int
) -> tuple[list[list[float]] | None, str | None]:
    kept, reason = [], None
    for poly in polygons:
        if not isinstance(poly, (list, tuple)):
            reason = "a polygon that is not a list of numbers"
            continue
        try:
            coords = [float(v) for v in poly]
        except (TypeError, ValueError):
            reason = "a polygon that is not a list of numbers"
            continue
        if not all(math.isfinite(v) for v in coords):
            reason = "non-finite polygon coordinates"
            continue
        if len(coords) < 6 or len(coords) % 2:
            reason = "a polygon of fewer than 3 points"
            continue
        xs = np.clip(coords[0::2], 0.0, float(width))
        ys = np.clip(coords[1::2], 0.0, float(height))
        kept.append(np.stack([xs, ys], axis=1).reshape(-1).tolist())
    return (kept, None) if kept else (None, reason or "an empty polygon list")


def _clean_rle(rle: dict, height: int, width: int) -> tuple[dict | None, str | None]:
    size, counts = rle.get("size"), rle.get("counts")
    if not (isinstance(size, (list, tuple)) and len(size) == 2):
        return None, "an RLE without a [height, width] size"
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        return None, "an RLE without a [height, width] size"
    if h <= 0 or w <= 0 or h > _MAX_RLE_SIZE_FACTOR * height or w > _MAX_RLE_SIZE_FACTOR * width:
        return None, f"an RLE of size {h}x{w} for a {height}x{width} image"
    if isinstance(counts, bytes):
        counts = counts.decode("ascii", errors="replace")
    if isinstance(counts, str):
        try:
            runs = decode_rle_string(counts)
        except ValueError:
            return None, "an RLE whose counts string is not an RLE encoding"
    elif isinstance(counts, (list, tuple)) and all(
        isinstance(v, (int, np.integer)) for v in counts
    ):
        runs = [int(v) for v in counts]
    else:
        return None, "an RLE without counts"
    if any(r < 0 for r in runs) or sum(runs) != h * w:
        return None, "an RLE whose runs do not cover its size"
    return {"size": [h, w], "counts": counts if isinstance(counts, str) else runs}, None


def clean_segmentation(segmentation, height: int, width: int) -> tuple[object | None, str | None]:
    """A segmentation that pycocotools can safely decode, or None with the reason.

    Polygons: the finite ones of at least 3 points are kept, their vertices clipped to the
    image; RLE: size within twice the image's, counts a valid encoding whose runs add up to the
    size.

    Args:
        segmentation: the annotation's ``segmentation`` (polygons or an RLE dict), or None.
        height, width: the image's size.

    Returns:
        (segmentation, None) or (None, reason).
    """
    if segmentation is None:
        return None, "no segmentation"
    if isinstance(segmentation, list):
        return _clean_polygons(segmentation, height, width)
    if isinstance(segmentation, dict):
        return _clean_rle(segmentation, height, width)
    return None, f"a segmentation of type {type(segmentation).__name__}"
