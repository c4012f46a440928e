"""Loaders: the sample contract, exact resume, rank shards, bad images, missing files, registry."""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import idip.data.build as build
from idip.data import build_test_loader, build_train_loader, get_dataset, train_batch_size_per_rank
from idip.data.image_io import ImageReadError
from idip.data.shapes import shapes_paths

from .conftest import NUM_TRAIN, NUM_VAL, tiny_cfg


def _batches(loader, n):
    return list(itertools.islice(loader, n))


def _same_batches(a, b) -> bool:
    if len(a) != len(b):
        return False
    for batch_a, batch_b in zip(a, b):
        if [s["file_name"] for s in batch_a] != [s["file_name"] for s in batch_b]:
            return False
        for sa, sb in zip(batch_a, batch_b):
            if not torch.equal(sa["image"], sb["image"]):
                return False
            if any(
                not torch.equal(sa["instances"][k], sb["instances"][k])
                for k in ("boxes", "classes", "masks")
            ):
                return False
    return True


def test_training_samples_follow_the_contract(shapes_root):
    cfg = tiny_cfg(shapes_root)
    with open(shapes_paths(shapes_root, "train")[0]) as f:
        sizes = {im["id"]: (im["height"], im["width"]) for im in json.load(f)["images"]}
    for batch in _batches(build_train_loader(cfg), 3):
        assert isinstance(batch, list) and len(batch) == 4
        for sample in batch:
            image, inst = sample["image"], sample["instances"]
            assert image.dtype == torch.uint8 and image.dim() == 3 and image.shape[0] == 3
            _, h, w = image.shape
            assert 200 <= min(h, w) <= 260 and max(h, w) <= 400
            assert (sample["height"], sample["width"]) == sizes[sample["image_id"]]
            assert os.path.isfile(sample["file_name"])
            g = inst["boxes"].shape[0]
            assert g >= 1 and inst["boxes"].dtype == torch.float32 and inst["boxes"].shape == (g, 4)
            assert inst["classes"].dtype == torch.int64 and inst["classes"].shape == (g,)
            assert 0 <= inst["classes"].min() and inst["classes"].max() <= 3
            assert inst["masks"].dtype == torch.bool and inst["masks"].shape == (g, h, w)
            for box, mask in zip(inst["boxes"], inst["masks"]):
                ys, xs = mask.nonzero(as_tuple=True)
                mask_box = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
                # the box is the annotation's, scaled; the mask is resampled nearest, which can drop
                # the last pixels of a one-pixel-wide star tip when shrinking
                assert (mask_box - box).abs().max() <= 2.5


@pytest.mark.parametrize("grouping", [True, False])
def test_start_iter_gives_the_batches_of_an_uninterrupted_run(shapes_root, grouping):
    cfg = tiny_cfg(shapes_root)
    cfg.DATALOADER.ASPECT_RATIO_GROUPING = grouping
    full = _batches(build_train_loader(cfg), 7)
    resumed = _batches(build_train_loader(cfg, start_iter=4), 3)
    assert _same_batches(full[4:], resumed)
    assert not _same_batches(full[:3], resumed)
    cfg.SEED = 6
    assert not _same_batches(full[:3], _batches(build_train_loader(cfg), 3))


def test_start_iter_counts_iterations_of_grad_accum_steps_batches(shapes_root):
    cfg = tiny_cfg(shapes_root)
    cfg.SOLVER.GRAD_ACCUM_STEPS = 2  # 4 images per iteration = 2 forward passes of 2
    full = _batches(build_train_loader(cfg), 6)
    assert all(len(b) == 2 for b in full)
    assert _same_batches(full[4:], _batches(build_train_loader(cfg, start_iter=2), 2))


def test_workers_give_the_same_batches(shapes_root):
    cfg = tiny_cfg(shapes_root)
    in_process = _batches(build_train_loader(cfg, start_iter=2), 3)
    cfg.DATALOADER.NUM_WORKERS = 2
    assert _same_batches(in_process, _batches(build_train_loader(cfg, start_iter=2), 3))


def test_two_ranks_see_disjoint_images_within_an_epoch(shapes_root, monkeypatch):
    cfg = tiny_cfg(shapes_root)
    cfg.DATALOADER.ASPECT_RATIO_GROUPING = False
    cfg.SOLVER.IMS_PER_BATCH = 4
    monkeypatch.setattr(build, "get_world_size", lambda: 2)
    ids = []
    for rank in range(2):
        monkeypatch.setattr(build, "get_rank", lambda rank=rank: rank)
        batches = _batches(build_train_loader(cfg), NUM_TRAIN // 4)  # 2 per rank x 4 = one epoch
        assert all(len(b) == 2 for b in batches)
        ids.append([s["image_id"] for b in batches for s in b])
    assert set(ids[0]).isdisjoint(ids[1])
    assert sorted(ids[0] + ids[1]) == list(range(1, NUM_TRAIN + 1))


def test_test_loader_covers_each_image_once_over_two_ranks(shapes_root, monkeypatch):
    cfg = tiny_cfg(shapes_root)
    cfg.TEST.IMS_PER_BATCH = 2
    monkeypatch.setattr(build, "get_world_size", lambda: 2)
    seen = []
    for rank in range(2):
        monkeypatch.setattr(build, "get_rank", lambda rank=rank: rank)
        for batch in build_test_loader(cfg, "tiny_val"):
            for sample in batch:
                assert "instances" not in sample and sample["image"].dtype == torch.uint8
                assert (
                    min(sample["image"].shape[1:]) == 256 or max(sample["image"].shape[1:]) == 400
                )
                seen.append(sample["image_id"])
    assert sorted(seen) == list(range(1, NUM_VAL + 1))


def test_batch_size_per_rank(monkeypatch):
    cfg = tiny_cfg("unused")
    cfg.SOLVER.IMS_PER_BATCH = 16
    assert train_batch_size_per_rank(cfg) == 16
    cfg.SOLVER.GRAD_ACCUM_STEPS = 4
    assert train_batch_size_per_rank(cfg) == 4
    monkeypatch.setattr(build, "get_world_size", lambda: 2)
    assert train_batch_size_per_rank(cfg) == 2
    cfg.SOLVER.IMS_PER_BATCH = 12
    with pytest.raises(ValueError, match="'SOLVER.IMS_PER_BATCH' is 12"):
        train_batch_size_per_rank(cfg)
    cfg.SOLVER.GRAD_ACCUM_STEPS = 0
    cfg.SOLVER.IMS_PER_BATCH = 7
    with pytest.raises(ValueError, match="'SOLVER.IMS_PER_BATCH' is 7"):
        train_batch_size_per_rank(cfg)


@pytest.fixture
def corrupt_copy(shapes_root, tmp_path) -> tuple[str, str, str]:
    """A copy of the tiny train split with one truncated image: (json, folder, bad file)."""
    json_file, folder = shapes_paths(shapes_root, "train")
    images = str(tmp_path / "images")
    shutil.copytree(folder, images)
    bad = os.path.join(images, "000003.png")
    with open(bad, "rb") as f:
        data = f.read()
    with open(bad, "wb") as f:
        f.write(data[: len(data) // 3])
    return json_file, images, bad


def test_corrupt_image_is_skipped_with_a_warning_in_training(shapes_root, corrupt_copy, caplog):
    json_file, images, bad = corrupt_copy
    cfg = tiny_cfg(shapes_root, train_json=json_file, train_images=images)
    cfg.DATALOADER.MAX_BAD_IMAGE_FRACTION = 0.1
    with caplog.at_level(logging.WARNING, logger="idip.data"):
        batches = _batches(build_train_loader(cfg), 2 * NUM_TRAIN // 4)  # two epochs
    assert bad in caplog.text and "skipped" in caplog.text
    assert all(len(b) == 4 for b in batches)
    assert all(s["file_name"] != bad for b in batches for s in b)
    # the replacement is deterministic too
    assert _same_batches(batches[5:], _batches(build_train_loader(cfg, start_iter=5), 3))


def test_training_aborts_when_too_many_images_fail(shapes_root, corrupt_copy):
    json_file, images, _ = corrupt_copy
    cfg = tiny_cfg(shapes_root, train_json=json_file, train_images=images)
    cfg.DATALOADER.MAX_BAD_IMAGE_FRACTION = 0.01  # 1% of 16 images: a single bad file is too many
    with pytest.raises(RuntimeError, match="MAX_BAD_IMAGE_FRACTION"):
        _batches(build_train_loader(cfg), 2 * NUM_TRAIN // 4)


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_image_is_an_error_in_evaluation(shapes_root, corrupt_copy, workers):
    json_file, images, bad = corrupt_copy
    cfg = tiny_cfg(shapes_root, train_json=json_file, train_images=images)
    cfg.DATALOADER.NUM_WORKERS = workers
    with pytest.raises(ImageReadError, match="000003.png"):
        for _ in build_test_loader(cfg, "tiny_train"):
            pass


def test_missing_annotation_file_or_folder_fails_at_build_time(shapes_root, tmp_path):
    cfg = tiny_cfg(shapes_root, train_json=str(tmp_path / "absent.json"))
    with pytest.raises(FileNotFoundError, match="absent.json"):
        build_train_loader(cfg)
    cfg = tiny_cfg(shapes_root, train_images=str(tmp_path / "no_such_folder"))
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        build_train_loader(cfg)
    cfg = tiny_cfg(str(tmp_path))
    cfg.DATASETS.TRAIN = ("coco_2017_train",)
    with pytest.raises(
        FileNotFoundError, match=os.path.join("coco", "annotations", "instances_train2017.json")
    ):
        build_train_loader(cfg)


def test_custom_datasets_relative_to_the_root_and_registry_errors(shapes_root):
    from idip.data.datasets import register_coco_dataset, register_from_cfg

    cfg = tiny_cfg(shapes_root)
    cfg.DATASETS.CUSTOM = [
        {"NAME": "rel_val", "JSON": "shapes/annotations/instances_val.json", "IMAGES": "shapes/val"}
    ]
    register_from_cfg(cfg)
    info = get_dataset("rel_val")
    assert info.json_file == os.path.join(shapes_root, "shapes/annotations/instances_val.json")
    assert (
        info.thing_classes == ["circle", "triangle", "rectangle", "star"] and info.num_classes == 4
    )
    assert info.category_id_to_contiguous == {1: 0, 2: 1, 3: 2, 4: 3}

    with pytest.raises(KeyError, match="did you mean 'shapes_train'") as error:
        get_dataset("shapes_trian")
    assert "coco_2017_val" in str(error.value) and "rel_val" in str(error.value)

    cfg.DATASETS.CUSTOM = [{"NAME": "x", "JSON": "a.json"}]
    with pytest.raises(ValueError, match=r"CUSTOM\[0\].*IMAGES"):
        register_from_cfg(cfg)
    cfg.DATASETS.CUSTOM = [
        {
            "NAME": "rel_val",
            "JSON": "shapes/annotations/instances_train.json",
            "IMAGES": "shapes/train",
        }
    ]
    register_from_cfg(cfg)  # the config replaces its own earlier entry
    assert get_dataset("rel_val").image_root == os.path.join(shapes_root, "shapes/train")
    cfg.DATASETS.CUSTOM = [{"NAME": "shapes_val", "JSON": "other.json", "IMAGES": "shapes/val"}]
    with pytest.raises(ValueError, match="shapes_val.*built-in"):
        register_from_cfg(cfg)
    with pytest.raises(ValueError, match="rel_val"):
        register_coco_dataset("rel_val", "x.json", "y")  # from Python, a conflict is an error


def _toy_dataset(tmp_path) -> tuple[str, str]:
    """Two 24x32 images: image 1 with one polygon (category id 40), image 2 with only a crowd."""
    images = tmp_path / "toy_images"
    images.mkdir()
    for name in ("one.png", "two.png"):
        Image.fromarray(np.full((24, 32, 3), 90, dtype=np.uint8)).save(images / name)
    data = {
        "images": [
            {"id": 1, "file_name": "one.png", "height": 24, "width": 32},
            {"id": 2, "file_name": "two.png", "height": 24, "width": 32},
        ],
        "annotations": [
            {
                "id": 0,
                "image_id": 1,
                "category_id": 40,
                "bbox": [4, 2, 8, 6],
                "iscrowd": 0,
                "segmentation": [[4, 2, 12, 2, 12, 8, 4, 8]],
            },
            {
                "id": 0,
                "image_id": 2,
                "category_id": 20,
                "bbox": [1, 1, 4, 4],
                "iscrowd": 1,
                "segmentation": [[1, 1, 5, 1, 5, 5, 1, 5]],
            },
        ],
        "categories": [{"id": 40, "name": "forty"}, {"id": 20, "name": "twenty"}],
    }
    json_file = tmp_path / "toy.json"
    json_file.write_text(json.dumps(data))
    return str(json_file), str(images)


@pytest.mark.parametrize("filter_empty", [True, False])
def test_crowd_only_images_and_non_contiguous_ids_in_the_loader(tmp_path, filter_empty):
    json_file, images = _toy_dataset(tmp_path)
    cfg = tiny_cfg(str(tmp_path), train_json=json_file, train_images=images)
    cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS = filter_empty
    cfg.SOLVER.IMS_PER_BATCH = 1
    cfg.INPUT.MIN_SIZE_TRAIN = (48,)
    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
    cfg.INPUT.RANDOM_FLIP = "none"
    samples = {s["image_id"]: s for b in _batches(build_train_loader(cfg), 6) for s in b}
    assert set(samples) == ({1} if filter_empty else {1, 2})
    one = samples[1]["instances"]
    assert one["classes"].tolist() == [1]  # id 40 sorts after id 20
    assert one["boxes"].tolist() == [[8.0, 4.0, 24.0, 16.0]]  # scaled x2
    assert samples[1]["image"].shape == (3, 48, 64)
    if not filter_empty:
        crowd = samples[2]["instances"]
        assert crowd["boxes"].shape == (0, 4) and crowd["classes"].shape == (0,)
        assert crowd["masks"].shape == (0, 48, 64) and crowd["masks"].dtype == torch.bool


def test_crowd_annotations_left_out_of_training_are_logged_per_dataset(tmp_path, caplog):
    json_file, images = _toy_dataset(tmp_path)  # 1 crowd annotation of 2
    with open(json_file) as f:
        data = json.load(f)
    crowd = data["annotations"][1]
    data["annotations"] += [dict(crowd, id=i) for i in range(1, 1234)]
    many = tmp_path / "many_crowd.json"
    many.write_text(json.dumps(data))
    cfg = tiny_cfg(str(tmp_path), train_json=json_file, train_images=images)
    cfg.DATASETS.CUSTOM = [
        *cfg.DATASETS.CUSTOM,
        {"NAME": "many_crowd", "JSON": str(many), "IMAGES": images},
    ]
    cfg.DATASETS.TRAIN = ("tiny_train", "many_crowd")
    with caplog.at_level(logging.INFO, logger="idip.data"):
        build_train_loader(cfg)
    lines = [r.getMessage() for r in caplog.records if "crowd annotation" in r.getMessage()]
    assert lines == [
        "tiny_train: 1 crowd annotation (of 2) excluded from the training targets",
        "many_crowd: 1,234 crowd annotations (of 1,235) excluded from the training targets",
    ]
    assert all(
        r.levelno == logging.INFO for r in caplog.records if "crowd annotation" in r.getMessage()
    )

    caplog.clear()  # evaluation keeps them (ignore regions): no such line
    with caplog.at_level(logging.INFO, logger="idip.data"):
        build_test_loader(cfg, "many_crowd")
    assert "crowd annotation" not in caplog.text


def test_train_py_logs_the_crowd_count(tmp_path):
    """From the command line: the real loader under train.py writes the line to log.txt."""
    import tests.engine.tiny_model  # noqa: F401  (registers TinyTestModel)
    import train
    from tests.engine.conftest import preserved_process_state

    json_file, images = _toy_dataset(tmp_path)
    out = tmp_path / "out"
    opts = [
        "MODEL.META_ARCHITECTURE", "TinyTestModel",
        "MODEL.DEVICE", "cpu",
        "DATASETS.CUSTOM", repr([{"NAME": "toy_train", "JSON": json_file, "IMAGES": images}]),
        "DATASETS.TRAIN", "('toy_train',)",
        "DATASETS.TEST", "()",
        "INPUT.MIN_SIZE_TRAIN", "(24,)",
        "INPUT.MAX_SIZE_TRAIN", "64",
        "SOLVER.IMS_PER_BATCH", "1",
        "SOLVER.MAX_ITER", "1",
        "SOLVER.STEPS", "(10,)",
        "SOLVER.WARMUP_ITERS", "0",
        "SOLVER.CHECKPOINT_PERIOD", "0",
        "DATALOADER.NUM_WORKERS", "0",
        "SEED", "1",
        "OUTPUT_DIR", str(out),
    ]  # fmt: skip
    with preserved_process_state():  # train.py sets up logging, seeds and torch settings
        assert train.cli(opts) == 0
    log = (out / "log.txt").read_text()
    assert "toy_train: 1 crowd annotation (of 2) excluded from the training targets" in log
