"""idip.data: COCO-format datasets, the synthetic `shapes` dataset, augmentation and loaders."""

from .build import build_test_loader, build_train_loader, train_batch_size_per_rank
from .datasets import DatasetInfo, get_dataset, register_coco_dataset, register_from_cfg

__all__ = [
    "DatasetInfo",
    "build_test_loader",
    "build_train_loader",
    "get_dataset",
    "register_coco_dataset",
    "register_from_cfg",
    "train_batch_size_per_rank",
]
