"""Fixtures of the reliability tests: isolated process state and dataset registry, and a tiny
custom COCO-format dataset full of awkward cases, written into a temporary folder."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from idip.data import datasets
from tests.engine.conftest import preserved_process_state


@pytest.fixture(autouse=True)
def isolated_state():
    """Each test sees the built-in dataset registry, the default root and the default torch/logger
    state; whatever it changes is undone."""
    saved_registry = dict(datasets._REGISTRY)
    saved_root = datasets._ROOT_FROM_CFG
    with preserved_process_state():
        yield
    datasets._REGISTRY.clear()
    datasets._REGISTRY.update(saved_registry)
    datasets._ROOT_FROM_CFG = saved_root


# Category ids are not contiguous on purpose: 3 -> 0, 7 -> 1, 10 -> 2.
CATEGORIES = [{"id": 10, "name": "ring"}, {"id": 3, "name": "box"}, {"id": 7, "name": "tri"}]


def _noise(h: int, w: int, channels: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, channels), dtype=np.uint8)


def _rect_polygon(x: float, y: float, w: float, h: float) -> list[list[float]]:
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def write_awkward_dataset(root: str) -> dict:
    """Writes ``root/images/*`` and ``root/annotations.json`` and returns what a correct loader
    must make of them: ``{"json", "images", "expected": {file name: dict}}`` where each entry
    holds the decoded (height, width), the number of usable (non-crowd, positive size, inside)
    instances and their contiguous classes (hand-written, in annotation order).
    """
    images_dir = os.path.join(root, "images")
    os.makedirs(images_dir, exist_ok=True)
    images, annotations, expected = [], [], {}

    def add_image(image_id, file_name, pil_image, height, width, anns, usable_classes, **save_kw):
        pil_image.save(os.path.join(images_dir, file_name), **save_kw)
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for ann in anns:
            annotations.append({"image_id": image_id, "iscrowd": 0, **ann})
        expected[file_name] = {"hw": (height, width), "classes": usable_classes}

    # 1. plain RGB; duplicate annotation ids (5, 5) and an annotation id 0
    add_image(
        1,
        "rgb.png",
        Image.fromarray(_noise(30, 40, 3, 1)),
        30,
        40,
        [
            {
                "id": 5,
                "category_id": 3,
                "bbox": [2, 3, 10, 8],
                "segmentation": _rect_polygon(2, 3, 10, 8),
            },
            {
                "id": 5,
                "category_id": 7,
                "bbox": [15, 10, 12, 12],
                "segmentation": _rect_polygon(15, 10, 12, 12),
            },
            {
                "id": 0,
                "category_id": 10,
                "bbox": [5, 15, 20, 10],
                "segmentation": _rect_polygon(5, 15, 20, 10),
            },
        ],
        [0, 1, 2],
    )
    # 2. grayscale
    add_image(
        2,
        "gray.png",
        Image.fromarray(_noise(32, 32, 1, 2)[..., 0], mode="L"),
        32,
        32,
        [
            {
                "id": 6,
                "category_id": 7,
                "bbox": [4, 4, 10, 10],
                "segmentation": _rect_polygon(4, 4, 10, 10),
            },
        ],
        [1],
    )
    # 3. RGBA (alpha must be dropped)
    add_image(
        3,
        "rgba.png",
        Image.fromarray(_noise(28, 36, 4, 3), mode="RGBA"),
        28,
        36,
        [
            {
                "id": 7,
                "category_id": 10,
                "bbox": [1, 1, 8, 8],
                "segmentation": _rect_polygon(1, 1, 8, 8),
            },
        ],
        [2],
    )
    # 4. CMYK JPEG
    add_image(
        4,
        "cmyk.jpg",
        Image.fromarray(_noise(24, 40, 4, 4), mode="CMYK"),
        24,
        40,
        [
            {
                "id": 8,
                "category_id": 3,
                "bbox": [10, 5, 12, 10],
                "segmentation": _rect_polygon(10, 5, 12, 10),
            },
        ],
        [0],
        format="JPEG",
    )
    # 5. EXIF-rotated: stored 48 wide x 20 high, orientation 6 (rotate 90 degrees clockwise) ->
    #    the image is 20 wide x 48 high, and the annotation describes that upright image.
    exif = Image.Exif()
    exif[0x0112] = 6
    add_image(
        5,
        "exif.jpg",
        Image.fromarray(_noise(20, 48, 3, 5)),
        48,
        20,
        [
            {
                "id": 9,
                "category_id": 7,
                "bbox": [2, 20, 10, 20],
                "segmentation": _rect_polygon(2, 20, 10, 20),
            },
        ],
        [1],
        format="JPEG",
        exif=exif.tobytes(),
    )
    # 6. only crowd annotations (kept for evaluation, dropped from training)
    add_image(
        6,
        "crowd.png",
        Image.fromarray(_noise(30, 30, 3, 6)),
        30,
        30,
        [
            {
                "id": 10,
                "category_id": 3,
                "bbox": [2, 2, 20, 20],
                "iscrowd": 1,
                "segmentation": {"size": [30, 30], "counts": [62, 20, 818]},
            },
        ],
        [],
    )
    # 7. boxes of zero and negative size next to a good one; a box entirely outside the image
    add_image(
        7,
        "degenerate.png",
        Image.fromarray(_noise(30, 40, 3, 7)),
        30,
        40,
        [
            {
                "id": 11,
                "category_id": 3,
                "bbox": [5, 5, 0, 10],
                "segmentation": _rect_polygon(5, 5, 1, 10),
            },
            {
                "id": 12,
                "category_id": 3,
                "bbox": [5, 5, 10, -4],
                "segmentation": _rect_polygon(5, 5, 10, 4),
            },
            {
                "id": 13,
                "category_id": 7,
                "bbox": [50, 40, 10, 10],
                "segmentation": _rect_polygon(50, 40, 10, 10),
            },
            {
                "id": 14,
                "category_id": 10,
                "bbox": [8, 8, 12, 12],
                "segmentation": _rect_polygon(8, 8, 12, 12),
            },
        ],
        [2],
    )
    # 8. masks reaching outside the image (polygon beyond the border, RLE of a larger size)
    add_image(
        8,
        "outside.png",
        Image.fromarray(_noise(30, 40, 3, 8)),
        30,
        40,
        [
            {
                "id": 15,
                "category_id": 3,
                "bbox": [30, 20, 20, 20],
                "segmentation": _rect_polygon(30, 20, 20, 20),
            },
            {
                "id": 16,
                "category_id": 10,
                "bbox": [0, 0, 10, 10],
                "segmentation": {"size": [60, 80], "counts": [0] + [10, 50] * 9 + [10, 4250]},
            },
        ],
        [0, 2],
    )
    # 9. much larger than the max size (long side 400, configs cap it at 64)
    add_image(
        9,
        "large.png",
        Image.fromarray(_noise(300, 400, 3, 9)),
        300,
        400,
        [
            {
                "id": 17,
                "category_id": 7,
                "bbox": [100, 100, 150, 120],
                "segmentation": _rect_polygon(100, 100, 150, 120),
            },
        ],
        [1],
    )

    json_file = os.path.join(root, "annotations.json")
    with open(json_file, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": CATEGORIES}, f)
    return {"json": json_file, "images": images_dir, "expected": expected}


def custom_dataset_opts(name: str, json_file: str, images: str) -> list[str]:
    """Command-line overrides registering one custom dataset."""
    return ["DATASETS.CUSTOM", repr([{"NAME": name, "JSON": json_file, "IMAGES": images}])]


@pytest.fixture
def awkward_dataset(tmp_path) -> dict:
    return write_awkward_dataset(str(tmp_path / "awkward"))


def one_error_line(stderr: str) -> str:
    """The single ``error: ...`` line a CLI printed (progress bars aside); fails on a traceback."""
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr[-3000:]
    return errors[0]
