"""The ground truth COCOeval is given: a COCO-format json made safe and unambiguous first.

pycocotools takes a json at its word, which goes wrong on data that training copes with:

- annotation ids: it keeps one annotation per id and treats id 0 as "no match", so duplicated
  ids or an id 0 silently lower the AP of perfect predictions. Every annotation gets its own id
  here, 1..N in file order (the file's ids are never used);
- ``area`` / ``iscrowd``: filled in when absent or invalid (the mask's area, else the box's);
- segmentations: polygons with non-finite vertices or fewer than 3 points, empty or invalid
  RLEs, or none at all, crash pycocotools or make it allocate without bound. They are checked
  with :func:`idip.data.segmentation.clean_segmentation`, as training checks them; an annotation
  whose segmentation is unusable keeps its box in the bbox evaluation and becomes an ignore
  region (a crowd annotation covering its box) in the segm evaluation, so that a prediction of
  that object neither scores nor counts against the model. A warning counts them;
- annotations without a valid box are dropped (training drops them too), with a counted warning.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
from collections import Counter

from ..data.errors import DatasetError
from ..data.segmentation import clean_segmentation

logger = logging.getLogger(__name__)


def _box(ann) -> list[float] | None:
    bbox = ann.get("bbox")
    if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4):
        return None
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        return None
    return [x, y, w, h]


def _box_polygon(box: list[float]) -> list[list[float]]:
    x, y, w, h = box
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def clean_ground_truth(data: dict, json_file: str) -> tuple[dict, dict]:
    """(bbox dataset, segm dataset): COCO-format dicts for pycocotools' ``COCO``.

    Raises:
        DatasetError: the json is not a COCO instances file, or an image lacks its size, naming
            the file and the entry.
    """
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(f"'{json_file}' has no 'images' list: not a COCO instances file")
    categories = data.get("categories")
    if not isinstance(categories, list) or not categories:
        raise DatasetError(f"'{json_file}' has no 'categories'")
    category_ids = {c.get("id") for c in categories if isinstance(c, dict)}
    images = {}
    for entry in data["images"]:
        if not isinstance(entry, dict) or any(k not in entry for k in ("id", "height", "width")):
            raise DatasetError(
                f"'{json_file}': image entry {entry!r:.80} lacks id, height or width"
            )
        images[entry["id"]] = entry
    mask_util = _mask_util()
    bbox_anns, segm_anns = [], []
    dropped, ignored = Counter(), Counter()
    for ann in data.get("annotations", []):
        if not isinstance(ann, dict):
            dropped["an entry that is not an object"] += 1
            continue
        image = images.get(ann.get("image_id"))
        if image is None:
            dropped["of an image not in 'images'"] += 1
            continue
        if ann.get("category_id") not in category_ids:
            raise DatasetError(
                f"'{json_file}': annotation {ann.get('id')!r} has category_id "
                f"{ann.get('category_id')!r}, which is not in 'categories'"
            )
        box = _box(ann)
        if box is None:
            dropped["without a box of positive size"] += 1
            continue
        try:
            iscrowd = 1 if int(ann.get("iscrowd", 0)) else 0
        except (TypeError, ValueError):
            iscrowd = 0
        height, width = int(image["height"]), int(image["width"])
        segmentation, why = clean_segmentation(ann.get("segmentation"), height, width)
        area = _area(ann, segmentation, box, height, width, mask_util)
        common = {
            "id": len(bbox_anns) + 1,
            "image_id": ann["image_id"],
            "category_id": ann["category_id"],
            "bbox": box,
            "area": area,
        }
        bbox_anns.append(
            {**common, "iscrowd": iscrowd, "segmentation": segmentation or _box_polygon(box)}
        )
        if segmentation is None:
            ignored[why] += 1
            segm_anns.append({**common, "iscrowd": 1, "segmentation": _box_polygon(box)})
        else:
            segm_anns.append({**common, "iscrowd": iscrowd, "segmentation": segmentation})
    for reason, count in sorted(dropped.items()):
        logger.warning("%s: %d annotations %s are not evaluated", json_file, count, reason)
    for reason, count in sorted(ignored.items()):
        logger.warning(
            "%s: %d annotations with %s: boxes evaluated, ignore regions in the segm evaluation",
            json_file,
            count,
            reason,
        )
    base = {
        "images": list(images.values()),
        "categories": categories,
        "info": data.get("info", {}),
        "licenses": data.get("licenses", []),
    }
    return {**base, "annotations": bbox_anns}, {**base, "annotations": segm_anns}


def _area(ann, segmentation, box, height, width, mask_util) -> float:
    area = ann.get("area")
    if isinstance(area, (int, float)) and math.isfinite(area) and area > 0:
        return float(area)
    if segmentation is not None:
        if isinstance(segmentation, list):
            rle = mask_util.merge(mask_util.frPyObjects(segmentation, height, width))
        elif isinstance(segmentation["counts"], list):
            rle = mask_util.frPyObjects(segmentation, *segmentation["size"])
        else:
            rle = dict(segmentation, counts=segmentation["counts"].encode())
        value = float(mask_util.area(rle))
        if value > 0:
            return value
    return box[2] * box[3]


def _mask_util():
    import pycocotools.mask as mask_util

    return mask_util


def load_ground_truth(json_file: str):
    """(bbox COCO, segm COCO) objects of pycocotools for ``json_file``, cleaned as above."""
    from pycocotools.coco import COCO

    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"COCO ground-truth file '{json_file}' does not exist")
    try:
        with open(json_file, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise DatasetError(f"'{json_file}' is not valid json: {err}") from None
    cocos = []
    for dataset in clean_ground_truth(data, json_file):
        coco = COCO()
        coco.dataset = dataset
        with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints
            coco.createIndex()
        cocos.append(coco)
    return tuple(cocos)
