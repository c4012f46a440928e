"""COCO json -> records: polygons, RLE, crowd, degenerate boxes, odd ids, missing files."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
from pycocotools.coco import COCO

from idip.data.coco import (
    count_crowd_annotations,
    filter_empty_annotations,
    load_coco_json,
    read_categories,
    segmentation_to_mask,
)

H, W = 20, 30


def _known_mask() -> np.ndarray:
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[3:9, 14:25] = 1
    mask[10:12, 0:3] = 1
    return mask


def _uncompressed_rle(mask: np.ndarray) -> dict:
    flat = mask.flatten(order="F")  # COCO RLE runs go down the columns
    counts, current, run = [], 0, 0
    for value in flat:
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    counts.append(run)
    return {"size": [H, W], "counts": counts}


def _write_dataset(tmp_path) -> tuple[str, str]:
    compressed = mask_util.encode(np.asfortranarray(_known_mask()[::-1].copy()))
    compressed["counts"] = compressed["counts"].decode("ascii")
    annotations = [
        # polygon square; ids 0 and duplicates are fine
        {
            "id": 0,
            "image_id": 1,
            "category_id": 7,
            "bbox": [2, 2, 10, 6],
            "iscrowd": 0,
            "segmentation": [[2, 2, 12, 2, 12, 8, 2, 8]],
        },
        {
            "id": 0,
            "image_id": 1,
            "category_id": 10,
            "bbox": [0, 3, 25, 9],
            "iscrowd": 0,
            "segmentation": _uncompressed_rle(_known_mask()),
        },
        {
            "id": 5,
            "image_id": 1,
            "category_id": 3,
            "bbox": [0, 8, 25, 9],
            "iscrowd": 0,
            "segmentation": compressed,
        },
        {
            "id": 5,
            "image_id": 1,
            "category_id": 3,
            "bbox": [4, 4, 0, 5],
            "iscrowd": 0,
            "segmentation": [[4, 4, 4, 9, 4, 4]],
        },  # zero width
        {
            "id": 6,
            "image_id": 1,
            "category_id": 3,
            "bbox": [4, 4, 3, -1],
            "iscrowd": 0,
            "segmentation": [[4, 4, 7, 4, 7, 3]],
        },  # negative height
        {
            "id": 7,
            "image_id": 1,
            "category_id": 3,
            "bbox": [20, 5, 20, 5],
            "iscrowd": 0,
            "segmentation": [[20, 5, 40, 5, 40, 10, 20, 10]],
        },  # half outside the image
        {
            "id": 8,
            "image_id": 2,
            "category_id": 7,
            "bbox": [1, 1, 5, 5],
            "iscrowd": 1,
            "segmentation": _uncompressed_rle(_known_mask()),
        },  # the only annotation of image 2
    ]
    data = {
        "images": [
            {"id": 1, "file_name": "a.png", "height": H, "width": W},
            {"id": 2, "file_name": "b.png", "height": H, "width": W},
            {"id": 3, "file_name": "c.png", "height": H, "width": W},
        ],
        "annotations": annotations,
        "categories": [
            {"id": 10, "name": "ten"},
            {"id": 3, "name": "three"},
            {"id": 7, "name": "seven"},
        ],
    }
    json_file = str(tmp_path / "instances.json")
    with open(json_file, "w") as f:
        json.dump(data, f)
    os.makedirs(tmp_path / "images", exist_ok=True)
    return json_file, str(tmp_path / "images")


def test_categories_sorted_by_id_to_contiguous(tmp_path):
    json_file, images = _write_dataset(tmp_path)
    _, categories = load_coco_json(json_file, images)
    assert categories.names == ["three", "seven", "ten"]
    assert categories.category_ids == [3, 7, 10]
    assert read_categories(json_file) == categories


def test_records_polygons_rle_crowd_and_dropped_boxes(tmp_path, caplog):
    json_file, images = _write_dataset(tmp_path)
    with caplog.at_level(logging.INFO, logger="idip.data"):
        records, _ = load_coco_json(json_file, images, "toy")
    assert [r["image_id"] for r in records] == [1, 2, 3]
    assert records[0]["file_name"] == os.path.join(images, "a.png")
    anns = records[0]["annotations"]
    assert [a["category_id"] for a in anns] == [1, 2, 0, 0]  # 7 -> 1, 10 -> 2, 3 -> 0
    assert "dropped 2 annotations (box of zero or negative size)" in caplog.text
    assert anns[3]["bbox"] == [20.0, 5.0, 30.0, 10.0]  # clipped to the image

    # masks against pycocotools' own COCO.annToMask (an independent decoder of the same json)
    coco = COCO(json_file)
    oracle = [coco.annToMask(a) for a in coco.dataset["annotations"] if a["image_id"] == 1]
    oracle = [oracle[0], oracle[1], oracle[2], oracle[5]]
    for ann, expected in zip(anns, oracle):
        mask = segmentation_to_mask(ann["segmentation"], H, W)
        assert mask.dtype == bool and mask.shape == (H, W)
        assert np.array_equal(mask, expected.astype(bool))
    assert np.array_equal(
        segmentation_to_mask(anns[1]["segmentation"], H, W), _known_mask().astype(bool)
    )
    assert np.array_equal(
        segmentation_to_mask(anns[2]["segmentation"], H, W), _known_mask()[::-1].astype(bool)
    )
    outside = segmentation_to_mask(anns[3]["segmentation"], H, W)
    assert outside[:, :20].sum() == 0 and outside[5:10, 21:30].all()

    crowd = records[1]["annotations"]
    assert len(crowd) == 1 and crowd[0]["iscrowd"] == 1
    assert count_crowd_annotations(records) == (1, 5)  # 2 of the 7 were dropped
    with caplog.at_level(logging.INFO, logger="idip.data"):
        kept = filter_empty_annotations(records, "toy")
    assert [r["image_id"] for r in kept] == [1]
    assert "removed 2 of 3 images" in caplog.text


def test_rle_of_another_size_is_cropped_or_padded():
    rle = mask_util.encode(np.asfortranarray(np.ones((4, 6), dtype=np.uint8)))
    mask = segmentation_to_mask(rle, 3, 8)
    expected = np.zeros((3, 8), dtype=bool)
    expected[:, :6] = True
    assert np.array_equal(mask, expected)


def test_unknown_category_is_an_error_naming_it(tmp_path):
    json_file, images = _write_dataset(tmp_path)
    with open(json_file) as f:
        data = json.load(f)
    data["annotations"][0]["category_id"] = 99
    with open(json_file, "w") as f:
        json.dump(data, f)
    with pytest.raises(ValueError, match="category_id 99"):
        load_coco_json(json_file, images)


def test_missing_json_or_image_folder_names_the_path(tmp_path):
    json_file, images = _write_dataset(tmp_path)
    missing_json = str(tmp_path / "nope" / "instances.json")
    with pytest.raises(FileNotFoundError, match="nope/instances.json"):
        load_coco_json(missing_json, images)
    with pytest.raises(FileNotFoundError, match="no_images_here"):
        load_coco_json(json_file, str(tmp_path / "no_images_here"))
