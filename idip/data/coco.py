"""COCO-format json -> per-image records, and instance-mask decoding with pycocotools.

A record (one per image) is a plain dict::

    {"file_name": str (path), "height": int, "width": int, "image_id": int,
     "annotations": [{"bbox": [x1, y1, x2, y2] (floats, clipped to the image),
                      "category_id": int (contiguous 0..K-1),
                      "iscrowd": int (0 or 1),
                      "segmentation": polygons (list[list[float]]) or RLE dict}, ...]}

Crowd annotations are kept (flagged) so the training targets can exclude them (the training
loader logs how many, per dataset). Annotation ids are never used, so duplicated or zero ids are
harmless.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np
import pycocotools.mask as mask_util

from .errors import DatasetError
from .segmentation import clean_segmentation

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Categories:
    """The classes of a COCO json: categories sorted by id -> contiguous ids 0..K-1."""

    names: list[str]
    category_ids: list[int]  # contiguous id -> json category id

    @property
    def id_to_contiguous(self) -> dict[int, int]:
        return {cid: i for i, cid in enumerate(self.category_ids)}


def _categories_from_list(entries, json_file: str) -> Categories:
    if not isinstance(entries, list) or not entries:
        raise DatasetError(f"'{json_file}' has no 'categories' list (or it is empty)")
    seen: dict[int, str] = {}
    for entry in entries:
        if not isinstance(entry, dict) or "id" not in entry or "name" not in entry:
            raise DatasetError(
                f"'{json_file}': category entry {entry!r} needs an 'id' and a 'name'"
            )
        cid = int(entry["id"])
        if cid in seen:
            raise DatasetError(f"'{json_file}': category id {cid} appears more than once")
        seen[cid] = str(entry["name"])
    ids = sorted(seen)
    return Categories(names=[seen[i] for i in ids], category_ids=ids)


def read_categories(json_file: str) -> Categories:
    """Reads only the class list of a COCO json (fast path for big files like COCO train).

    The text is scanned for the ``"categories":`` key and just that list is decoded; when that
    fails (unusual layout), the whole file is parsed.
    """
    with open(json_file, "r", encoding="utf-8") as f:
        text = f.read()
    decoder = json.JSONDecoder()
    position = text.rfind('"categories"')
    if position >= 0:
        start = position + len('"categories"')
        while start < len(text) and text[start] in " \t\r\n":
            start += 1
        if start < len(text) and text[start] == ":":
            start += 1
            while start < len(text) and text[start] in " \t\r\n":
                start += 1
            try:
                entries, _ = decoder.raw_decode(text, start)
                if isinstance(entries, list) and all(
                    isinstance(e, dict) and "id" in e and "name" in e for e in entries
                ):
                    return _categories_from_list(entries, json_file)
            except json.JSONDecodeError:
                pass
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"'{json_file}' is not valid json: {exc}") from exc
    if not isinstance(data, dict):
        raise DatasetError(
            f"'{json_file}' is not a COCO instances file: it holds a {type(data).__name__}, not "
            "an object with 'images', 'annotations' and 'categories'"
        )
    return _categories_from_list(data.get("categories"), json_file)


def load_coco_json(
    json_file: str, image_root: str, dataset_name: str = ""
) -> tuple[list[dict], Categories]:
    """Parses a COCO instances json into records (see the module docstring).

    Args:
        json_file: path of the COCO json.
        image_root: folder the images' ``file_name`` entries are relative to.
        dataset_name: used in log lines only.

    Returns:
        (records, categories). Records keep every image of the json, also those without usable
        annotations (see :func:`filter_empty_annotations`).

    Raises:
        FileNotFoundError: the json or the image folder does not exist (message names the path).
        ValueError: the json is malformed (message names the file and the entry at fault).
    """
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"annotation file not found: '{json_file}'")
    if not os.path.isdir(image_root):
        raise FileNotFoundError(f"image folder not found: '{image_root}'")
    try:
        with open(json_file, "r", encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"'{json_file}' is not valid json: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(f"'{json_file}' has no 'images' list: not a COCO instances file")
    categories = _categories_from_list(data.get("categories"), json_file)
    to_contiguous = categories.id_to_contiguous

    records: dict[int, dict] = {}
    for entry in data["images"]:
        missing = [k for k in ("id", "file_name", "height", "width") if k not in entry]
        if missing:
            raise DatasetError(
                f"'{json_file}': image entry {entry.get('id', entry)!r} lacks {missing}"
            )
        image_id = int(entry["id"])
        if image_id in records:
            raise DatasetError(f"'{json_file}': image id {image_id} appears more than once")
        records[image_id] = {
            "file_name": os.path.join(image_root, entry["file_name"]),
            "height": int(entry["height"]),
            "width": int(entry["width"]),
            "image_id": image_id,
            "annotations": [],
        }

    dropped: Counter = Counter()
    dropped_ids: dict[str, list] = defaultdict(list)  # reason -> annotation ids (named in the log)
    for ann in data.get("annotations", []):
        record = records.get(int(ann.get("image_id", -1)))
        if record is None:
            dropped["annotation of an image not in 'images'"] += 1
            continue
        cid = ann.get("category_id")
        if cid not in to_contiguous:
            raise DatasetError(
                f"'{json_file}': annotation {ann.get('id')} of image {record['image_id']} has "
                f"category_id {cid!r}, which is not in 'categories' {categories.category_ids}"
            )
        iscrowd = int(ann.get("iscrowd", 0))
        bbox = ann.get("bbox")
        if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4):
            dropped["missing bbox"] += 1
            continue
        x, y, w, h = (float(v) for v in bbox)
        if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
            dropped["box of zero or negative size"] += 1
            continue
        x1, y1 = max(x, 0.0), max(y, 0.0)
        x2, y2 = min(x + w, float(record["width"])), min(y + h, float(record["height"]))
        if x2 <= x1 or y2 <= y1:
            dropped["box outside the image"] += 1
            continue
        segmentation, why = clean_segmentation(
            ann.get("segmentation"), record["height"], record["width"]
        )
        if segmentation is None and not iscrowd:
            dropped[why] += 1
            dropped_ids[why].append(ann.get("id"))
            continue
        record["annotations"].append(
            {
                "bbox": [x1, y1, x2, y2],
                "category_id": to_contiguous[cid],
                "iscrowd": iscrowd,
                "segmentation": segmentation,
            }
        )
    name = dataset_name or json_file
    for reason, count in sorted(dropped.items()):
        ids = dropped_ids.get(reason)
        named = f": annotation ids {_abbreviate(ids)}" if ids else ""
        logger.warning("%s: dropped %d annotations (%s)%s", name, count, reason, named)
    logger.info("%s: loaded %d images from '%s'", name, len(records), json_file)
    return list(records.values()), categories


def _abbreviate(values: list, limit: int = 10) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f", ... ({len(values) - limit} more)" if len(values) > limit else "")


def count_crowd_annotations(records: list[dict]) -> tuple[int, int]:
    """(crowd annotations, all annotations) in ``records``; the training targets leave the crowd
    ones out (evaluation uses them as ignore regions)."""
    total = sum(len(r["annotations"]) for r in records)
    crowd = sum(1 for r in records for ann in r["annotations"] if ann["iscrowd"])
    return crowd, total


def has_usable_annotation(record: dict) -> bool:
    return any(not ann["iscrowd"] for ann in record["annotations"])


def filter_empty_annotations(records: list[dict], dataset_name: str = "") -> list[dict]:
    """Drops images without any non-crowd annotation (logs how many)."""
    kept = [r for r in records if has_usable_annotation(r)]
    if len(kept) < len(records):
        logger.info(
            "%s: removed %d of %d images without usable (non-crowd) annotations",
            dataset_name or "dataset",
            len(records) - len(kept),
            len(records),
        )
    return kept


def segmentation_to_mask(segmentation, height: int, width: int) -> np.ndarray:
    """Decodes polygons or (compressed / uncompressed) RLE into a bool mask [height, width].

    Polygons are rasterised by pycocotools at the image size (parts outside are cut off); an RLE
    whose size differs from the image is cropped or zero-padded to it.
    """
    if isinstance(segmentation, list):
        rles = mask_util.frPyObjects(segmentation, height, width)
        return mask_util.decode(mask_util.merge(rles)).astype(bool)
    rle = segmentation
    rle_h, rle_w = (int(v) for v in rle["size"])
    if isinstance(rle["counts"], list):
        rle = mask_util.frPyObjects(rle, rle_h, rle_w)
    mask = mask_util.decode(rle).astype(bool)
    if (rle_h, rle_w) != (height, width):
        fitted = np.zeros((height, width), dtype=bool)
        h, w = min(rle_h, height), min(rle_w, width)
        fitted[:h, :w] = mask[:h, :w]
        mask = fitted
    return mask
