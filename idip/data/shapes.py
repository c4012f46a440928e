"""`shapes`: a synthetic COCO-format instance-segmentation dataset, generated deterministically.

Each image (about 256x256, each side 224..288) has a textured, noisy background and 1-8 shapes
(circle, triangle, rectangle, star) of very different sizes, possibly cut by the image border and
partly hiding each other. Colours are drawn per instance, not per class, so a class can only be
told by its shape. Masks are what is visible; a shape that would leave an earlier one with less
than ``_MIN_VISIBLE_FRACTION`` of its area visible is placed elsewhere (or left out), so every
annotated instance is clearly visible.

Layout under ``<root>/shapes``::

    train/000000.png ...   val/000000.png ...
    annotations/instances_train.json   annotations/instances_val.json   (masks: compressed RLE)

Every image is a function of (seed, split, index) only, so the output does not depend on how
the work is spread over processes.
"""

from __future__ import annotations

import colorsys
import fcntl
import json
import logging
import math
import multiprocessing
import os
from contextlib import contextmanager

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

logger = logging.getLogger(__name__)

CLASS_NAMES = ("circle", "triangle", "rectangle", "star")
DEFAULT_NUM_IMAGES = {"train": 2000, "val": 300}
DEFAULT_SEED = 0
_SPLIT_CODES = {"train": 1, "val": 2}
_SIZE_RANGE = (224, 288)  # each image side, inclusive
_MAX_INSTANCES = 8
_MIN_VISIBLE_FRACTION = 0.35
_MIN_VISIBLE_AREA = 20  # pixels
_PLACEMENT_TRIES = 10


def shapes_paths(root: str, split: str) -> tuple[str, str]:
    """Returns (json_file, image_folder) of a split under ``root`` (the datasets root)."""
    base = os.path.join(root, "shapes")
    return os.path.join(base, "annotations", f"instances_{split}.json"), os.path.join(base, split)


# --- drawing ----------------------------------------------------------------------------------
def _smooth_field(rng: np.random.Generator, h: int, w: int, channels: int) -> np.ndarray:
    """Low-frequency noise [h, w, channels] of unit scale (a small random grid upsampled)."""
    gh, gw = int(rng.integers(3, 9)), int(rng.integers(3, 9))
    grid = rng.normal(0.0, 1.0, (gh, gw, channels)).astype(np.float32)
    out = np.empty((h, w, channels), dtype=np.float32)
    for c in range(channels):
        out[..., c] = np.asarray(
            Image.fromarray(grid[..., c], mode="F").resize((w, h), Image.BICUBIC)
        )
    return out


def _background(
    rng: np.random.Generator, h: int, w: int, yy: np.ndarray, xx: np.ndarray
) -> np.ndarray:
    c0, c1 = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    theta = rng.uniform(0, 2 * math.pi)
    t = xx * math.cos(theta) + yy * math.sin(theta)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    image = c0 * (1 - t)[..., None] + c1 * t[..., None]
    image += _smooth_field(rng, h, w, 3) * rng.uniform(10, 35)
    kind = int(rng.integers(0, 3))
    weights = rng.uniform(0.5, 1.0, 3).astype(np.float32)
    if kind == 0:  # stripes
        period, angle = rng.uniform(6, 24), rng.uniform(0, math.pi)
        phase = (xx * math.cos(angle) + yy * math.sin(angle)) * (2 * math.pi / period)
        image += (np.sin(phase) * rng.uniform(8, 25))[..., None] * weights
    elif kind == 1:  # checkerboard
        cell = int(rng.integers(6, 24))
        checker = ((xx.astype(np.int32) // cell + yy.astype(np.int32) // cell) % 2) * 2.0 - 1.0
        image += (checker * rng.uniform(8, 25))[..., None] * weights
    return image


def _polygon_mask(vertices: np.ndarray, h: int, w: int) -> np.ndarray:
    """Even-odd rasterisation of a polygon [V, 2] (x, y) at pixel centres -> bool [h, w]."""
    mask = np.zeros((h, w), dtype=bool)
    x0, y0 = (
        max(int(math.floor(vertices[:, 0].min())), 0),
        max(int(math.floor(vertices[:, 1].min())), 0),
    )
    x1, y1 = (
        min(int(math.ceil(vertices[:, 0].max())) + 1, w),
        min(int(math.ceil(vertices[:, 1].max())) + 1, h),
    )
    if x1 <= x0 or y1 <= y0:
        return mask
    px = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5
    py = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5
    inside = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    for i in range(len(vertices)):
        xa, ya = vertices[i]
        xb, yb = vertices[i - 1]
        if ya == yb:
            continue
        crosses = (ya > py) != (yb > py)
        x_at = (xb - xa) * (py - ya) / (yb - ya) + xa
        inside ^= crosses & (px < x_at)
    mask[y0:y1, x0:x1] = inside
    return mask


def _shape_mask(rng: np.random.Generator, label: int, h: int, w: int) -> np.ndarray:
    radius = math.exp(rng.uniform(math.log(7.0), math.log(0.5 * min(h, w))))
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    angle = rng.uniform(0, 2 * math.pi)
    name = CLASS_NAMES[label]
    if name == "circle":
        x0, x1 = max(int(cx - radius), 0), min(int(cx + radius) + 2, w)
        y0, y1 = max(int(cy - radius), 0), min(int(cy + radius) + 2, h)
        mask = np.zeros((h, w), dtype=bool)
        if x1 > x0 and y1 > y0:
            px = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - cx
            py = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - cy
            mask[y0:y1, x0:x1] = px * px + py * py <= radius * radius
        return mask
    if name == "triangle":
        angles = angle + np.array([0.0, 2.0, 4.0]) * math.pi / 3 + rng.uniform(-0.35, 0.35, 3)
        radii = radius * rng.uniform(0.8, 1.0, 3)
    elif name == "rectangle":
        half_diag = rng.uniform(math.radians(25), math.radians(45))
        angles = angle + np.array([half_diag, math.pi - half_diag, math.pi + half_diag, -half_diag])
        radii = np.full(4, radius)
    else:  # star: 5 outer and 5 inner points
        inner = rng.uniform(0.38, 0.5)
        angles = angle + np.arange(10) * math.pi / 5
        radii = radius * np.where(np.arange(10) % 2 == 0, 1.0, inner)
    vertices = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
    return _polygon_mask(vertices.astype(np.float32), h, w)


def _instance_colour(rng: np.random.Generator, canvas: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A saturated colour far (in RGB) from what it is painted over."""
    under = canvas[mask].mean(axis=0)
    best, best_distance = None, -1.0
    for _ in range(8):
        hue, sat, val = rng.uniform(0, 1), rng.uniform(0.45, 1.0), rng.uniform(0.45, 1.0)
        rgb = np.array(colorsys.hsv_to_rgb(hue, sat, val), dtype=np.float32) * 255.0
        distance = float(np.linalg.norm(rgb - under))
        if distance > best_distance:
            best, best_distance = rgb, distance
        if distance >= 90:
            break
    return best


def render_image(
    seed: int, split: str, index: int
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """Draws one image of the dataset.

    Returns:
        (image uint8 [H, W, 3], instances) with instances a list of (class index, visible bool
        mask [H, W]) in drawing order.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_CODES[split], index]))
    h, w = (int(v) for v in rng.integers(_SIZE_RANGE[0], _SIZE_RANGE[1] + 1, 2))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    canvas = _background(rng, h, w, yy, xx)
    owner = np.full((h, w), -1, dtype=np.int32)  # index of the instance seen at each pixel
    full_area: list[int] = []
    visible = np.zeros(_MAX_INSTANCES, dtype=np.int64)  # visible pixels of each placed instance
    labels: list[int] = []
    for _ in range(int(rng.integers(1, _MAX_INSTANCES + 1))):
        label = int(rng.integers(0, len(CLASS_NAMES)))
        for _try in range(_PLACEMENT_TRIES):
            mask = _shape_mask(rng, label, h, w)
            area = int(mask.sum())
            if area < _MIN_VISIBLE_AREA:
                continue
            lost = np.bincount(owner[mask] + 1, minlength=_MAX_INSTANCES + 1)[1:]
            if labels:
                left = (visible - lost)[: len(labels)]
                if np.any(
                    (left < _MIN_VISIBLE_FRACTION * np.array(full_area))
                    | (left < _MIN_VISIBLE_AREA)
                ):
                    continue
            colour = _instance_colour(rng, canvas, mask)
            gx, gy = rng.uniform(-1, 1, 2) * 25.0 / max(math.sqrt(area), 1.0)
            ys, xs = np.nonzero(mask)
            shade = (xs - xs.mean()) * gx + (ys - ys.mean()) * gy
            canvas[ys, xs] = colour + shade[:, None].astype(np.float32)
            owner[mask] = len(labels)
            visible -= lost
            visible[len(labels)] = area
            full_area.append(area)
            labels.append(label)
            break
    amplitude = int(rng.integers(3, 13))  # uniform pixel noise in [-amplitude, amplitude]
    noise = rng.integers(-amplitude, amplitude + 1, canvas.shape, dtype=np.int16)
    image = np.clip(np.rint(canvas).astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return image, [(label, owner == i) for i, label in enumerate(labels)]


def _make_image(task: tuple[int, str, int, str]) -> tuple[int, int, int, list[dict]]:
    seed, split, index, folder = task
    image, instances = render_image(seed, split, index)
    # zlib strategy 2 (Huffman only): faster than LZ matching, and as small for noisy pixels
    path = os.path.join(folder, f"{index:06d}.png")
    Image.fromarray(image).save(path, compress_level=1, compress_type=2)
    annotations = []
    for label, mask in instances:
        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        ys, xs = np.nonzero(mask)
        x0, y0 = int(xs.min()), int(ys.min())
        annotations.append(
            {
                "category_id": label + 1,
                "segmentation": {
                    "size": [int(v) for v in rle["size"]],
                    "counts": rle["counts"].decode("ascii"),
                },
                "area": int(mask.sum()),
                "bbox": [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
                "iscrowd": 0,
            }
        )
    return index, image.shape[0], image.shape[1], annotations


def generate_split(
    root: str, split: str, num_images: int, seed: int = DEFAULT_SEED, workers: int | None = None
) -> str:
    """Generates one split of the dataset under ``<root>/shapes``; returns the json path."""
    from tqdm import tqdm

    json_file, folder = shapes_paths(root, split)
    os.makedirs(folder, exist_ok=True)
    os.makedirs(os.path.dirname(json_file), exist_ok=True)
    tasks = [(seed, split, i, folder) for i in range(num_images)]
    workers = workers if workers is not None else min(os.cpu_count() or 1, 8)
    bar = dict(total=num_images, desc=f"generating shapes_{split}", unit="img", leave=False)
    if workers > 1 and num_images >= 64:
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with multiprocessing.get_context(method).Pool(workers) as pool:
            results = list(tqdm(pool.imap(_make_image, tasks, chunksize=16), **bar))
    else:
        results = [_make_image(t) for t in tqdm(tasks, **bar)]
    images, annotations = [], []
    for index, height, width, anns in sorted(results, key=lambda r: r[0]):
        image_id = index + 1
        images.append(
            {"id": image_id, "file_name": f"{index:06d}.png", "height": height, "width": width}
        )
        for ann in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
    data = {
        "info": {"description": f"idip synthetic shapes, split {split}, seed {seed}"},
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASS_NAMES)
        ],
    }
    tmp = json_file + f".tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(tmp, json_file)  # the json appears only once every image is written
    return json_file


@contextmanager
def _file_lock(path: str):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_shapes(
    root: str, split: str, num_images: int | None = None, seed: int = DEFAULT_SEED
) -> tuple[str, str]:
    """Generates the split on first use (under a file lock, so concurrent ranks generate it once).

    Returns:
        (json_file, image_folder).
    """
    if split not in _SPLIT_CODES:
        raise ValueError(f"shapes split must be one of {sorted(_SPLIT_CODES)}, got {split!r}")
    json_file, folder = shapes_paths(root, split)
    if os.path.isfile(json_file):
        return json_file, folder
    with _file_lock(os.path.join(root, "shapes", ".generate.lock")):
        if not os.path.isfile(json_file):  # another process may have finished meanwhile
            count = num_images if num_images is not None else DEFAULT_NUM_IMAGES[split]
            logger.info(
                "generating the shapes dataset (%s, %d images) under %s", split, count, root
            )
            generate_split(root, split, count, seed=seed)
    return json_file, folder


def main(argv: list[str] | None = None) -> None:
    """``python -m idip.data.shapes [--root DIR]``: generates both splits ahead of time."""
    import argparse

    parser = argparse.ArgumentParser(description="Generate the synthetic shapes dataset.")
    parser.add_argument(
        "--root",
        default=os.environ.get("IDIP_DATASETS") or "./datasets",
        help="datasets root; the data goes to <root>/shapes",
    )
    parser.add_argument("--num-train", type=int, default=DEFAULT_NUM_IMAGES["train"])
    parser.add_argument("--num-val", type=int, default=DEFAULT_NUM_IMAGES["val"])
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    for split, count in (("train", args.num_train), ("val", args.num_val)):
        json_file, _ = ensure_shapes(args.root, split, num_images=count, seed=args.seed)
        print(f"shapes_{split}: {json_file}")


if __name__ == "__main__":
    main()
