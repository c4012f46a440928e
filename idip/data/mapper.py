"""Record -> model sample: read the image, augment, build the instance targets."""

from __future__ import annotations

import random

import numpy as np
import torch

from .coco import segmentation_to_mask
from .image_io import ImageReadError, read_image
from .transforms import ResizeFlipAugmentation


class DatasetMapper:
    """Turns a record (see :mod:`idip.data.coco`) into a sample dict (the shared contract)::

        {"image": uint8 [3, H, W] RGB (resized/flipped), "height": int, "width": int (original
         size), "image_id": int, "file_name": str,
         "instances": {"boxes": float32 [G, 4] xyxy, "classes": int64 [G], "masks": bool [G, H, W]}}

    Crowd annotations are left out of "instances". Test-time samples have no "instances".
    """

    def __init__(self, augmentation: ResizeFlipAugmentation, with_instances: bool):
        self.augmentation = augmentation
        self.with_instances = with_instances

    @classmethod
    def from_config(cls, cfg, is_train: bool) -> "DatasetMapper":
        return cls(ResizeFlipAugmentation.from_config(cfg, is_train), with_instances=is_train)

    def __call__(self, record: dict, rng: random.Random) -> dict:
        """Maps one record; ``rng`` drives the augmentation.

        Raises:
            ImageReadError: the image cannot be read or its size differs from the annotation's.
        """
        file_name = record["file_name"]
        image = read_image(file_name)
        height, width = record["height"], record["width"]
        if image.shape[:2] != (height, width):
            raise ImageReadError(
                file_name,
                f"decoded size (h={image.shape[0]}, w={image.shape[1]}) differs from the "
                "annotation's "
                f"(h={height}, w={width})",
            )
        transform = self.augmentation.sample(height, width, rng)
        image = transform.apply_image(image)
        sample = {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "height": height,
            "width": width,
            "image_id": record["image_id"],
            "file_name": file_name,
        }
        if self.with_instances:
            annotations = [a for a in record["annotations"] if not a["iscrowd"]]
            boxes = torch.tensor([a["bbox"] for a in annotations], dtype=torch.float32).reshape(
                -1, 4
            )
            classes = torch.tensor([a["category_id"] for a in annotations], dtype=torch.int64)
            if annotations:
                masks = torch.from_numpy(
                    np.stack(
                        [
                            segmentation_to_mask(a["segmentation"], height, width)
                            for a in annotations
                        ]
                    )
                )
            else:
                masks = torch.zeros((0, height, width), dtype=torch.bool)
            sample["instances"] = {
                "boxes": transform.apply_boxes(boxes),
                "classes": classes,
                "masks": transform.apply_masks(masks),
            }
        return sample
