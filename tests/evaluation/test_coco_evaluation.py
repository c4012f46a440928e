"""COCOEvaluator on a tiny hand-made COCO json; pycocotools decodes the ground truth (oracle)."""

import json
import logging
import math
import os
import sys

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from idip.evaluation import COCOEvaluator, coco_evaluation, inference_on_dataset

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools vs numpy 2

CATEGORY_IDS = [3, 7, 11]  # non-contiguous on purpose; contiguous label i <-> CATEGORY_IDS[i]
IMAGES = {11: (120, 160), 22: (80, 100), 33: (48, 64)}  # id -> (height, width)


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """Column-major run lengths starting with a run of zeros, written out by hand."""
    flat = mask.astype(np.uint8).flatten(order="F")
    counts, current, run = [], 0, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return {"counts": counts, "size": list(mask.shape)}


def _ann(ann_id, image_id, category_id, segmentation, iscrowd=0):
    h, w = IMAGES[image_id]
    if isinstance(segmentation, list):
        rle = mask_util.merge(mask_util.frPyObjects(segmentation, h, w))
    elif isinstance(segmentation["counts"], list):
        rle = mask_util.frPyObjects(segmentation, h, w)
    else:
        rle = segmentation
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "iscrowd": iscrowd,
        "segmentation": segmentation,
        "area": float(mask_util.area(rle)),
        "bbox": [float(v) for v in mask_util.toBbox(rle)],
    }


@pytest.fixture(scope="module")
def coco_json(tmp_path_factory):
    yy, xx = np.mgrid[:80, :100]
    circle = (xx - 50) ** 2 + (yy - 40) ** 2 <= 15**2
    small_rect = np.zeros((80, 100), np.uint8)
    small_rect[5:13, 5:15] = 1
    compressed = mask_util.encode(np.asfortranarray(small_rect))
    compressed["counts"] = compressed["counts"].decode("ascii")
    crowd = np.zeros((80, 100), bool)
    crowd[50:75, 70:95] = True
    annotations = [
        _ann(1, 11, 7, [[5, 5, 125, 5, 125, 100, 5, 100]]),  # large square
        _ann(2, 11, 11, [[100, 60, 158, 118, 100, 118]]),  # medium triangle
        _ann(3, 22, 3, _uncompressed_rle(circle)),  # small circle, uncompressed RLE
        _ann(4, 22, 7, compressed),  # small rectangle, compressed RLE
        _ann(5, 22, 3, _uncompressed_rle(crowd), iscrowd=1),
        _ann(6, 33, 3, [[2, 2, 62, 2, 62, 40, 2, 40]]),  # medium rectangle
    ]
    data = {
        "images": [
            {"id": i, "height": h, "width": w, "file_name": f"{i}.png"}
            for i, (h, w) in IMAGES.items()
        ],
        "categories": [
            {"id": 3, "name": "circle"},
            {"id": 7, "name": "square"},
            {"id": 11, "name": "triangle"},
        ],
        "annotations": annotations,
    }
    path = tmp_path_factory.mktemp("coco") / "tiny.json"
    path.write_text(json.dumps(data))
    areas = sorted(a["area"] for a in annotations if not a["iscrowd"])
    assert areas[0] < 32**2 < areas[2] < 96**2 < areas[-1]  # small, medium and large objects
    return str(path)


def ground_truth_predictions(json_file, image_ids=None):
    """(inputs, outputs) that reproduce the non-crowd ground truth exactly, score 1."""
    coco = COCO(json_file)
    inputs, outputs = [], []
    for image_id in image_ids or sorted(IMAGES):
        h, w = IMAGES[image_id]
        anns = [a for a in coco.imgToAnns[image_id] if not a["iscrowd"]]
        boxes = [
            [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
            for a in anns
        ]
        inputs.append({"image_id": image_id, "height": h, "width": w})
        outputs.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "scores": torch.ones(len(anns)),
                "labels": torch.tensor([CATEGORY_IDS.index(a["category_id"]) for a in anns]),
                "masks": torch.from_numpy(np.stack([coco.annToMask(a) for a in anns]).astype(bool)),
            }
        )
    return inputs, outputs


def make_evaluator(json_file, **kwargs):
    return COCOEvaluator(
        "tiny",
        json_file=json_file,
        contiguous_to_category_id=CATEGORY_IDS,
        distributed=False,
        **kwargs,
    )


def test_ground_truth_as_predictions_gives_ap_100(coco_json, tmp_path):
    evaluator = make_evaluator(coco_json, output_dir=str(tmp_path))
    inputs, outputs = ground_truth_predictions(coco_json)
    evaluator.reset()
    evaluator.process(inputs[:2], outputs[:2])
    evaluator.process(inputs[2:], outputs[2:])
    metrics = evaluator.evaluate()
    assert set(metrics) == {"bbox", "segm"}
    for task in ("bbox", "segm"):
        for name in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
            assert metrics[task][name] == pytest.approx(100.0), (task, name)
        for name in ("circle", "square", "triangle"):
            assert metrics[task][f"AP-{name}"] == pytest.approx(100.0)
    saved = json.loads((tmp_path / "coco_eval_metrics.json").read_text())
    assert saved["segm"]["AP"] == pytest.approx(100.0)


def test_results_json_has_original_ids_xywh_and_str_rle(coco_json, tmp_path):
    evaluator = make_evaluator(coco_json, output_dir=str(tmp_path))
    inputs, outputs = ground_truth_predictions(coco_json, [22])
    evaluator.process(inputs, outputs)
    evaluator.evaluate()
    results = json.loads((tmp_path / "coco_instances_results.json").read_text())
    assert len(results) == 2
    assert sorted(r["category_id"] for r in results) == [3, 7]
    rect = next(r for r in results if r["category_id"] == 7)
    assert rect["bbox"] == [5.0, 5.0, 10.0, 8.0]  # xywh of small_rect[5:13, 5:15]
    assert rect["image_id"] == 22 and rect["score"] == 1.0
    for r, labels in zip(sorted(results, key=lambda r: r["category_id"]), [0, 1]):
        assert isinstance(r["segmentation"]["counts"], str)
        decoded = mask_util.decode(
            {
                "size": r["segmentation"]["size"],
                "counts": r["segmentation"]["counts"].encode("ascii"),
            }
        )
        index = outputs[0]["labels"].tolist().index(labels)
        assert np.array_equal(decoded.astype(bool), outputs[0]["masks"][index].numpy())


def test_wrong_category_mapping_scores_zero(coco_json):
    inputs, outputs = ground_truth_predictions(coco_json)
    evaluator = COCOEvaluator(
        None, json_file=coco_json, contiguous_to_category_id=[7, 11, 3], distributed=False
    )
    evaluator.process(inputs, outputs)
    metrics = evaluator.evaluate()
    assert metrics["bbox"]["AP"] == 0.0 and metrics["segm"]["AP"] == 0.0


def test_mapping_defaults_to_sorted_json_category_ids(coco_json):
    evaluator = COCOEvaluator(None, json_file=coco_json, distributed=False)
    assert evaluator.contiguous_to_category_id == CATEGORY_IDS
    inputs, outputs = ground_truth_predictions(coco_json)
    evaluator.process(inputs, outputs)
    assert evaluator.evaluate()["bbox"]["AP"] == pytest.approx(100.0)


def test_no_predictions_gives_zero_with_warning(coco_json, caplog, tmp_path):
    evaluator = make_evaluator(coco_json, output_dir=str(tmp_path))
    inputs = [{"image_id": i, "height": h, "width": w} for i, (h, w) in IMAGES.items()]
    outputs = [
        {
            "boxes": torch.zeros(0, 4),
            "scores": torch.zeros(0),
            "labels": torch.zeros(0, dtype=torch.int64),
            "masks": torch.zeros(0, h, w, dtype=torch.bool),
        }
        for h, w in IMAGES.values()
    ]
    evaluator.process(inputs, outputs)
    with caplog.at_level(logging.WARNING, logger="idip.evaluation.coco_evaluation"):
        metrics = evaluator.evaluate()
    assert "no predictions" in caplog.text
    for task in ("bbox", "segm"):
        assert metrics[task]["AP"] == 0.0 and metrics[task]["APl"] == 0.0
        assert metrics[task]["AP-circle"] == 0.0
    assert json.loads((tmp_path / "coco_instances_results.json").read_text()) == []


def test_subset_of_images_is_scored_on_that_subset(coco_json):
    evaluator = make_evaluator(coco_json)
    inputs, outputs = ground_truth_predictions(coco_json, [11])
    evaluator.process(inputs, outputs)
    metrics = evaluator.evaluate()
    assert metrics["bbox"]["AP"] == pytest.approx(100.0)
    assert math.isnan(metrics["bbox"]["APs"])  # image 11 has no small object
    assert math.isnan(metrics["bbox"]["AP-circle"])  # nor a circle


def test_bbox_only_outputs_skip_segm(coco_json):
    evaluator = make_evaluator(coco_json)
    inputs, outputs = ground_truth_predictions(coco_json)
    for out in outputs:
        del out["masks"]
    evaluator.process(inputs, outputs)
    metrics = evaluator.evaluate()
    assert list(metrics) == ["bbox"] and metrics["bbox"]["AP"] == pytest.approx(100.0)


def test_bad_outputs_are_reported(coco_json):
    evaluator = make_evaluator(coco_json)
    inputs, outputs = ground_truth_predictions(coco_json, [22])
    bad = dict(outputs[0], labels=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="image 22 has labels"):
        evaluator.process(inputs, [bad])
    bad = dict(outputs[0], masks=outputs[0]["masks"][:, :40])
    with pytest.raises(ValueError, match=r"image 22 has masks of size \(40, 100\)"):
        evaluator.process(inputs, [bad])
    with pytest.raises(ValueError, match="2 inputs but 1 outputs"):
        evaluator.process(inputs * 2, outputs)


def test_does_not_need_the_dataset_registry_when_given_files(coco_json, monkeypatch):
    monkeypatch.setitem(sys.modules, "idip.data.datasets", None)  # any import of it fails
    evaluator = COCOEvaluator(
        "not_registered",
        json_file=coco_json,
        contiguous_to_category_id=CATEGORY_IDS,
        distributed=False,
    )
    inputs, outputs = ground_truth_predictions(coco_json)
    evaluator.process(inputs, outputs)
    assert evaluator.evaluate()["segm"]["AP"] == pytest.approx(100.0)


def test_distributed_gather_deduplicates_and_only_rank0_scores(coco_json, monkeypatch):
    inputs, outputs = ground_truth_predictions(coco_json)
    rank0 = COCOEvaluator("tiny", json_file=coco_json, contiguous_to_category_id=CATEGORY_IDS)
    rank1 = COCOEvaluator("tiny", json_file=coco_json, contiguous_to_category_id=CATEGORY_IDS)
    rank0.process(inputs[:2], outputs[:2])
    # rank 1 got the last image plus a repeat of image 11 (padding of an uneven shard)
    rank1.process(inputs[2:] + inputs[:1], outputs[2:] + outputs[:1])
    monkeypatch.setattr(
        coco_evaluation, "all_gather", lambda obj: [rank0._predictions, rank1._predictions]
    )
    monkeypatch.setattr(coco_evaluation, "synchronize", lambda: None)
    monkeypatch.setattr(coco_evaluation, "is_main_process", lambda: True)
    metrics = rank0.evaluate()
    assert metrics["bbox"]["AP"] == pytest.approx(100.0)
    assert metrics["segm"]["AP"] == pytest.approx(100.0)
    monkeypatch.setattr(coco_evaluation, "is_main_process", lambda: False)
    assert rank1.evaluate() == {}


def test_inference_on_dataset(coco_json):
    inputs, outputs = ground_truth_predictions(coco_json)
    by_id = {i["image_id"]: o for i, o in zip(inputs, outputs)}

    class LookupModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(1))
            self.calls = 0

        def forward(self, batch):
            assert not self.training and not torch.is_grad_enabled()
            self.calls += 1
            return [
                {
                    k: (v * self.weight if k == "scores" else v)
                    for k, v in by_id[s["image_id"]].items()
                }
                for s in batch
            ]

    model = LookupModel().train()
    loader = [inputs[:2], inputs[2:]]
    evaluator = make_evaluator(coco_json)
    evaluator.process(inputs[:1], [dict(outputs[0], labels=torch.zeros_like(outputs[0]["labels"]))])
    metrics = inference_on_dataset(model, loader, evaluator)  # resets the stale prediction
    assert model.calls == 2 and model.training
    assert metrics["bbox"]["AP"] == pytest.approx(100.0)
    assert metrics["segm"]["AP"] == pytest.approx(100.0)


def test_metadata_from_the_dataset_registry(coco_json):
    from idip.data.datasets import register_coco_dataset

    register_coco_dataset("tiny_eval_test", coco_json, os.path.dirname(coco_json), overwrite=True)
    evaluator = COCOEvaluator("tiny_eval_test", distributed=False)
    assert evaluator.contiguous_to_category_id == CATEGORY_IDS
    inputs, outputs = ground_truth_predictions(coco_json)
    evaluator.process(inputs, outputs)
    metrics = evaluator.evaluate()
    assert metrics["segm"]["AP"] == pytest.approx(100.0)
    assert metrics["segm"]["AP-triangle"] == pytest.approx(100.0)
