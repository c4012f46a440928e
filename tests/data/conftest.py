"""Fixtures of the data tests: a tiny generated shapes dataset and an isolated dataset registry."""

from __future__ import annotations

import pytest

from idip.config import get_cfg
from idip.data import datasets
from idip.data.shapes import generate_split, shapes_paths

NUM_TRAIN, NUM_VAL = 16, 6


@pytest.fixture(autouse=True)
def isolated_registry():
    """Each test sees the built-in registry and default root; its registrations are undone."""
    saved_registry = dict(datasets._REGISTRY)
    saved_root = datasets._ROOT_FROM_CFG
    yield
    datasets._REGISTRY.clear()
    datasets._REGISTRY.update(saved_registry)
    datasets._ROOT_FROM_CFG = saved_root


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory) -> str:
    """A datasets root holding a tiny shapes dataset (16 train, 6 val images)."""
    root = str(tmp_path_factory.mktemp("datasets"))
    generate_split(root, "train", NUM_TRAIN, seed=11)
    generate_split(root, "val", NUM_VAL, seed=11)
    return root


def tiny_cfg(root: str, train_json: str | None = None, train_images: str | None = None):
    """A config training on the tiny shapes set (registered as tiny_train / tiny_val)."""
    cfg = get_cfg()
    json_train, images_train = shapes_paths(root, "train")
    json_val, images_val = shapes_paths(root, "val")
    cfg.DATASETS.ROOT = root
    cfg.DATASETS.CUSTOM = [
        {
            "NAME": "tiny_train",
            "JSON": train_json or json_train,
            "IMAGES": train_images or images_train,
        },
        {"NAME": "tiny_val", "JSON": json_val, "IMAGES": images_val},
    ]
    cfg.DATASETS.TRAIN = ("tiny_train",)
    cfg.DATASETS.TEST = ("tiny_val",)
    cfg.INPUT.MIN_SIZE_TRAIN = (200, 260)
    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "range"
    cfg.INPUT.MAX_SIZE_TRAIN = 400
    cfg.INPUT.MIN_SIZE_TEST = 256
    cfg.INPUT.MAX_SIZE_TEST = 400
    cfg.SOLVER.IMS_PER_BATCH = 4
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SEED = 5
    return cfg
