"""Annotations that used to crash pycocotools or score wrong (#21 items 1-3): bad polygons and
RLEs are checked before pycocotools sees them, in training and in evaluation; evaluation gives
every annotation its own id and fills area/iscrowd."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util

from idip.data.coco import load_coco_json, segmentation_to_mask
from idip.data.segmentation import clean_segmentation, decode_rle_string
from idip.evaluation import COCOEvaluator

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools vs numpy 2

H, W = 40, 60


def _rect(x, y, w, h):
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def _write(tmp_path, annotations, images=((1, H, W),)):
    data = {
        "images": [
            {"id": i, "height": h, "width": w, "file_name": f"{i}.png"} for i, h, w in images
        ],
        "categories": [{"id": 5, "name": "thing"}, {"id": 9, "name": "other"}],
        "annotations": annotations,
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data, allow_nan=True))
    return str(path)


def _ann(ann_id, segmentation, bbox=(5.0, 5.0, 10.0, 8.0), **extra):
    return {
        "id": ann_id,
        "image_id": 1,
        "category_id": 5,
        "bbox": list(bbox),
        "iscrowd": 0,
        "segmentation": segmentation,
        **extra,
    }


def test_rle_strings_decode_as_pycocotools_encodes_them():
    rng = np.random.default_rng(0)
    for _ in range(100):
        h, w = rng.integers(1, 50, 2)
        m = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        runs = decode_rle_string(mask_util.encode(np.asfortranarray(m))["counts"].decode())
        flat = np.concatenate([np.full(r, i % 2, np.uint8) for i, r in enumerate(runs)])
        assert np.array_equal(flat.reshape(w, h).T, m)


@pytest.mark.parametrize(
    "segmentation, reason",
    [
        ([[5, 5, 15, float("nan"), 15, 13]], "non-finite polygon coordinates"),
        ([[5, 5, 15, float("inf"), 15, 13]], "non-finite polygon coordinates"),
        ([[5, 5, 15, 5]], "a polygon of fewer than 3 points"),
        ([], "an empty polygon list"),
        ({"size": [H, W], "counts": [5, 3]}, "an RLE whose runs do not cover its size"),
        (
            {"size": [H, W], "counts": "not an rle"},
            "an RLE whose counts string is not an RLE encoding",
        ),
        (
            {"size": [100000, 100000], "counts": "PPYo1"},
            "an RLE of size 100000x100000 for a 40x60 image",
        ),
        ({"counts": [H * W]}, "an RLE without a [height, width] size"),
        (None, "no segmentation"),
    ],
)
def test_training_drops_unusable_segmentations_naming_the_annotation(
    tmp_path, caplog, segmentation, reason
):
    (tmp_path / "images").mkdir()
    path = _write(tmp_path, [_ann(1, _rect(5, 5, 10, 8)), _ann(77, segmentation)])
    with caplog.at_level(logging.WARNING, logger="idip.data.coco"):
        records, _ = load_coco_json(path, str(tmp_path / "images"))
    assert len(records[0]["annotations"]) == 1
    assert f"dropped 1 annotations ({reason}): annotation ids 77" in caplog.text


def test_huge_vertices_are_clipped_to_the_image(tmp_path):
    """A vertex at 1e30 (valid box): kept, clipped, decoded at once into an image-sized mask."""
    (tmp_path / "images").mkdir()
    path = _write(tmp_path, [_ann(3, [[5, 5, 1e30, 5, 1e30, 13, 5, 13]])])
    records, _ = load_coco_json(path, str(tmp_path / "images"))
    (ann,) = records[0]["annotations"]
    assert ann["segmentation"] == [[5.0, 5.0, 60.0, 5.0, 60.0, 13.0, 5.0, 13.0]]
    mask = segmentation_to_mask(ann["segmentation"], H, W)
    assert mask.shape == (H, W) and mask[5:13, 5:60].all() and not mask[:5].any()


def _perfect_predictions(annotations):
    """Predictions equal to the usable ground truth (score 1)."""
    masks, boxes, labels = [], [], []
    for a in annotations:
        seg, _ = clean_segmentation(a["segmentation"], H, W)
        if seg is None or a.get("iscrowd"):
            continue
        masks.append(segmentation_to_mask(seg, H, W))
        x, y, w, h = a["bbox"]
        boxes.append([x, y, x + w, y + h])
        labels.append([5, 9].index(a["category_id"]))
    outputs = {
        "boxes": torch.tensor(boxes),
        "scores": torch.ones(len(boxes)),
        "labels": torch.tensor(labels),
        "masks": torch.from_numpy(np.stack(masks)),
    }
    return [{"image_id": 1, "height": H, "width": W}], [outputs]


def _evaluate(path, annotations):
    evaluator = COCOEvaluator(
        None, json_file=path, contiguous_to_category_id=[5, 9], distributed=False
    )
    evaluator.process(*_perfect_predictions(annotations))
    return evaluator.evaluate()


def _three_objects(ids):
    return [
        {**_ann(ids[0], _rect(2, 2, 10, 8), bbox=(2, 2, 10, 8))},
        {**_ann(ids[1], _rect(20, 5, 12, 12), bbox=(20, 5, 12, 12)), "category_id": 9},
        {**_ann(ids[2], _rect(35, 20, 20, 15), bbox=(35, 20, 20, 15))},
    ]


@pytest.mark.parametrize("ids", [(4, 4, 4), (0, 1, 2), (7, 0, 7)])
def test_perfect_predictions_score_100_whatever_the_annotation_ids(tmp_path, ids):
    annotations = _three_objects(ids)
    metrics = _evaluate(_write(tmp_path, annotations), annotations)
    assert metrics["bbox"]["AP"] == pytest.approx(100.0)
    assert metrics["segm"]["AP"] == pytest.approx(100.0)


def test_missing_area_and_iscrowd_are_filled(tmp_path):
    annotations = _three_objects((1, 2, 3))
    for a in annotations:
        a.pop("iscrowd")
        a["area"] = float("nan") if a["id"] == 2 else -1
    metrics = _evaluate(_write(tmp_path, annotations), annotations)
    assert metrics["segm"]["AP"] == pytest.approx(100.0) and metrics["bbox"]["AP"] == pytest.approx(
        100.0
    )


@pytest.mark.parametrize(
    "bad",
    [
        None,  # no segmentation at all
        [[30, 30, 40, 30]],  # a polygon of 2 points
        [[30, 30, float("nan"), 30, 40, 40]],  # a NaN vertex
        {"size": [H, W], "counts": [1, 2, 3]},  # runs that do not cover the image
    ],
)
def test_unusable_ground_truth_masks_do_not_crash_evaluation(tmp_path, caplog, bad):
    """Their boxes are evaluated; in the segm evaluation they are ignore regions, so a model
    that predicts those objects is not penalised (AP stays 100 for the usable masks)."""
    annotations = _three_objects((1, 2, 3))
    unusable = _ann(4, bad, bbox=(30, 25, 12, 10))
    if bad is None:
        unusable.pop("segmentation")
    path = _write(tmp_path, annotations + [unusable])
    inputs, outputs = _perfect_predictions(annotations)
    # the model also finds the object whose ground-truth mask is unusable
    extra = torch.zeros(1, H, W, dtype=torch.bool)
    extra[0, 25:35, 30:42] = True
    outputs[0] = {
        "boxes": torch.cat([outputs[0]["boxes"], torch.tensor([[30.0, 25, 42, 35]])]),
        "scores": torch.cat([outputs[0]["scores"], torch.ones(1)]),
        "labels": torch.cat([outputs[0]["labels"], torch.tensor([0])]),
        "masks": torch.cat([outputs[0]["masks"], extra]),
    }
    evaluator = COCOEvaluator(
        None, json_file=path, contiguous_to_category_id=[5, 9], distributed=False
    )
    evaluator.process(inputs, outputs)
    with caplog.at_level(logging.WARNING, logger="idip.evaluation.ground_truth"):
        metrics = evaluator.evaluate()
    assert metrics["bbox"]["AP"] == pytest.approx(100.0)
    assert metrics["segm"]["AP"] == pytest.approx(100.0)
    assert (
        "1 annotations with" in caplog.text
        and "ignore regions in the segm evaluation" in caplog.text
    )
