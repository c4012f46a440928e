"""COCO-style bbox and mask evaluation with pycocotools, gathered over ranks."""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
import json
import logging
import math
import os
from typing import Any, Sequence

import numpy as np
import torch

from ..utils.distributed import all_gather, is_main_process, synchronize
from .ground_truth import load_ground_truth

logger = logging.getLogger(__name__)

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
TASKS = ("bbox", "segm")
RESULTS_FILE = "coco_instances_results.json"
METRICS_FILE = "coco_eval_metrics.json"


def _pycocotools():
    try:
        from pycocotools import mask as mask_util
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as e:  # pragma: no cover - pycocotools is a runtime dependency
        raise ImportError("COCO evaluation needs pycocotools: pip install pycocotools") from e
    return mask_util, COCO, COCOeval


class COCOEvaluator:
    """Turns model outputs into COCO results and scores them with pycocotools.

    Usage: ``reset()``, then ``process(inputs, outputs)`` for every batch, then ``evaluate()``.

    Args:
        dataset_name: a registered dataset (``idip.data.datasets.get_dataset``); looked up only
            when ``json_file`` or ``contiguous_to_category_id`` is not given.
        output_dir: when given, rank 0 writes ``coco_instances_results.json`` (the detections)
            and ``coco_eval_metrics.json`` (the returned dict) there.
        distributed: gather the predictions of every rank on rank 0, which alone evaluates;
            other ranks get ``{}``. When False, each process evaluates what it processed.
        json_file: COCO-format ground truth, instead of the dataset's.
        contiguous_to_category_id: model label -> COCO category id, instead of the dataset's
            (default with only ``json_file``: the json's category ids sorted).
        per_category: also report "AP-<class name>" per category for each task.
    """

    def __init__(
        self,
        dataset_name: str | None,
        output_dir: str | None = None,
        distributed: bool = True,
        *,
        json_file: str | None = None,
        contiguous_to_category_id: Sequence[int] | None = None,
        per_category: bool = True,
    ):
        if dataset_name is None and json_file is None:
            raise ValueError("COCOEvaluator needs a dataset_name or a json_file")
        self.dataset_name = dataset_name
        self.output_dir = output_dir
        self.distributed = distributed
        self.per_category = per_category
        self._json_file = json_file
        self._contiguous_to_category_id = None
        if contiguous_to_category_id is not None:
            self._contiguous_to_category_id = [int(c) for c in contiguous_to_category_id]
        self._class_names: list[str] | None = None
        self._coco_gt = None  # {"bbox": COCO, "segm": COCO} (see ground_truth.py)
        self._predictions: list[dict[str, Any]] = []

    # -- metadata, resolved lazily so that building an evaluator costs nothing ------------------

    def _dataset(self):
        from ..data.datasets import get_dataset

        return get_dataset(self.dataset_name)

    @property
    def json_file(self) -> str:
        if self._json_file is None:
            self._json_file = self._dataset().json_file
        return self._json_file

    @property
    def contiguous_to_category_id(self) -> list[int]:
        if self._contiguous_to_category_id is None:
            if self._json_file is not None:
                self._contiguous_to_category_id = sorted(c["id"] for c in self._read_categories())
            else:
                info = self._dataset()
                self._contiguous_to_category_id = list(info.contiguous_to_category_id)
                self._class_names = list(info.thing_classes)
        return self._contiguous_to_category_id

    def _read_categories(self) -> list[dict]:
        if self._coco_gt is not None:
            return list(self._coco_gt["bbox"].cats.values())
        try:
            with open(self.json_file) as f:
                return json.load(f)["categories"]
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"cannot read the categories of '{self.json_file}': {e}") from None

    def _load_gt(self, task: str = "bbox"):
        """pycocotools' COCO of the ground truth for ``task``, cleaned (see ground_truth.py)."""
        if self._coco_gt is None:
            _pycocotools()  # a clear error when pycocotools is missing
            bbox_gt, segm_gt = load_ground_truth(self.json_file)
            self._coco_gt = {"bbox": bbox_gt, "segm": segm_gt}
        return self._coco_gt[task]

    # -- accumulation ---------------------------------------------------------------------------

    def reset(self) -> None:
        """Forgets every processed prediction."""
        self._predictions = []

    def process(self, inputs: list[dict], outputs: list[dict]) -> None:
        """Converts one batch of model outputs to COCO results.

        Args:
            inputs: dataset samples, each with "image_id" (and "height", "width", used to check
                the mask size).
            outputs: one dict per input with "boxes" [K,4] xyxy in original image coordinates,
                "scores" [K], "labels" [K] contiguous int64, optionally "masks" [K,H,W] bool.
        """
        if len(inputs) != len(outputs):
            raise ValueError(
                f"COCOEvaluator.process got {len(inputs)} inputs but {len(outputs)} outputs"
            )
        mapping = self.contiguous_to_category_id
        for sample, output in zip(inputs, outputs):
            if "image_id" not in sample:
                raise KeyError("COCOEvaluator.process: an input sample has no 'image_id'")
            image_id = int(sample["image_id"])
            instances = _to_coco_results(image_id, output, sample, mapping)
            self._predictions.append({"image_id": image_id, "instances": instances})

    # -- scoring --------------------------------------------------------------------------------

    def evaluate(self) -> dict[str, dict[str, float]]:
        """Scores everything processed (on every rank when distributed).

        Returns:
            on the evaluating rank: {"bbox": {...}, "segm": {...}}, each with AP, AP50, AP75,
            APs, APm, APl in percent (NaN where the ground truth has no object of that size) and
            "AP-<class>" per category when ``per_category``; "segm" only when masks were
            predicted (or nothing was). ``{}`` on the other ranks.
        """
        if self.distributed:
            synchronize()
            gathered = all_gather(self._predictions)
            if not is_main_process():
                return {}
            predictions = list(itertools.chain.from_iterable(gathered))
        else:
            predictions = self._predictions

        per_image: dict[int, list[dict]] = {}
        for entry in predictions:  # the last batch of a sharded loader may repeat images
            per_image.setdefault(entry["image_id"], entry["instances"])
        results = [r for instances in per_image.values() for r in instances]
        image_ids = sorted(per_image)
        if not image_ids:
            logger.warning("COCOEvaluator: no image was processed; every AP is 0")

        if self.output_dir:
            os.makedirs(self.output_dir, exist_ok=True)
            path = os.path.join(self.output_dir, RESULTS_FILE)
            with open(path, "w") as f:
                json.dump(results, f)
            logger.info("saved %d COCO results to %s", len(results), path)

        tasks = ["bbox"]
        if not results or any("segmentation" in r for r in results):
            tasks.append("segm")
        metrics = {task: self._evaluate_task(task, results, image_ids) for task in tasks}

        if self.output_dir:
            with open(os.path.join(self.output_dir, METRICS_FILE), "w") as f:
                json.dump(metrics, f, indent=2)
        return metrics

    def _class_name_list(self) -> list[str]:
        if self._class_names is None:
            names = {c["id"]: c["name"] for c in self._read_categories()}
            self._class_names = [names.get(c, str(c)) for c in self.contiguous_to_category_id]
        return self._class_names

    def _evaluate_task(self, task: str, results: list[dict], image_ids: list[int]) -> dict:
        _, _, COCOeval = _pycocotools()
        coco_gt = self._load_gt(task)
        class_names = self._class_name_list()
        if not results:
            # pycocotools' loadRes cannot take an empty list.
            logger.warning("COCOEvaluator: no predictions for %s; every AP is 0", task)
            metrics = {name: 0.0 for name in METRIC_NAMES}
            if self.per_category:
                metrics.update({f"AP-{name}": 0.0 for name in class_names})
            return metrics

        detections = copy.deepcopy(results)
        if task == "segm":
            # Without "bbox", loadRes takes each detection's area from its mask, not its box.
            for d in detections:
                d.pop("bbox", None)
        detections = [d for d in detections if task == "bbox" or "segmentation" in d]
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = coco_gt.loadRes(detections)
        coco_eval = COCOeval(coco_gt, coco_dt, task)
        if image_ids:
            coco_eval.params.imgIds = image_ids
        with contextlib.redirect_stdout(io.StringIO()):  # the table is format_ap_table's
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()

        metrics = {
            name: float(coco_eval.stats[i] * 100) if coco_eval.stats[i] >= 0 else math.nan
            for i, name in enumerate(METRIC_NAMES)
        }
        if self.per_category:
            # precision: [IoU thresholds, recall points, categories, area ranges, max dets]
            precision = coco_eval.eval["precision"]
            cat_index = {c: i for i, c in enumerate(coco_eval.params.catIds)}
            for name, cat_id in zip(class_names, self.contiguous_to_category_id):
                values = precision[:, :, cat_index[cat_id], 0, -1] if cat_id in cat_index else []
                values = np.asarray(values)
                values = values[values > -1]
                metrics[f"AP-{name}"] = float(values.mean() * 100) if values.size else math.nan
        return metrics


def _to_coco_results(image_id: int, output: dict, sample: dict, mapping: list[int]) -> list[dict]:
    """One image's predictions as COCO result dicts (xywh boxes, RLE masks, category ids)."""
    for key in ("boxes", "scores", "labels"):
        if key not in output:
            raise KeyError(f"COCOEvaluator.process: the output for image {image_id} has no {key!r}")
    boxes = torch.as_tensor(output["boxes"]).detach().to("cpu", torch.float64).reshape(-1, 4)
    scores = torch.as_tensor(output["scores"]).detach().to("cpu", torch.float64).reshape(-1)
    labels = torch.as_tensor(output["labels"]).detach().to("cpu", torch.int64).reshape(-1)
    count = boxes.shape[0]
    if scores.numel() != count or labels.numel() != count:
        raise ValueError(
            f"COCOEvaluator.process: image {image_id} has {count} boxes, {scores.numel()} scores "
            f"and {labels.numel()} labels"
        )
    if count and (labels.min() < 0 or labels.max() >= len(mapping)):
        raise ValueError(
            f"COCOEvaluator.process: image {image_id} has labels in "
            f"[{int(labels.min())}, {int(labels.max())}], outside 0..{len(mapping) - 1}"
        )

    rles = None
    if "masks" in output:
        rles = _encode_masks(image_id, output["masks"], sample, count)

    xywh = boxes.clone()
    xywh[:, 2:] -= xywh[:, :2]
    results = []
    for i in range(count):
        result = {
            "image_id": image_id,
            "category_id": mapping[int(labels[i])],
            "bbox": [float(v) for v in xywh[i]],
            "score": float(scores[i]),
        }
        if rles is not None:
            result["segmentation"] = rles[i]
        results.append(result)
    return results


def _encode_masks(image_id: int, masks, sample: dict, count: int) -> list[dict]:
    """[K,H,W] masks -> compressed RLEs with str counts (json-serialisable)."""
    mask_util, _, _ = _pycocotools()
    masks = torch.as_tensor(masks).detach().to("cpu")
    if masks.dim() != 3 or masks.shape[0] != count:
        raise ValueError(
            f"COCOEvaluator.process: image {image_id} has masks of shape {list(masks.shape)}; "
            f"expected [{count}, H, W]"
        )
    if "height" in sample and "width" in sample:
        expected = (int(sample["height"]), int(sample["width"]))
        if tuple(masks.shape[1:]) != expected:
            raise ValueError(
                f"COCOEvaluator.process: image {image_id} has masks of size "
                f"{tuple(masks.shape[1:])}, but the original image is {expected} (height, width)"
            )
    if masks.dtype != torch.bool:
        masks = masks > 0.5
    # pycocotools wants [H, W, K] uint8 in Fortran order.
    array = np.asfortranarray(masks.permute(1, 2, 0).numpy().astype(np.uint8))
    rles = mask_util.encode(array) if count else []
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def format_ap_table(results: dict[str, dict[str, float]]) -> str:
    """The AP table of one dataset, in percent: a row per task ("bbox", "segm") with the COCO
    columns, then each task's per-category AP when it was computed."""
    rule = "------+-" + "-+-".join("-" * 6 for _ in METRIC_NAMES)
    lines = ["task  | " + " | ".join(f"{c:>6}" for c in METRIC_NAMES), rule]
    per_category = []
    for task, metrics in results.items():
        if not isinstance(metrics, dict):
            continue
        cells = []
        for column in METRIC_NAMES:
            value = metrics.get(column)
            cells.append(f"{value:6.2f}" if isinstance(value, (int, float)) else f"{'-':>6}")
        lines.append(f"{task:<5} | " + " | ".join(cells))
        values = [(k[3:], v) for k, v in metrics.items() if k.startswith("AP-")]
        if values:
            per_category.append(
                f"{task} AP per category: " + ", ".join(f"{n} {v:.2f}" for n, v in values)
            )
    return "\n".join(lines + per_category)
