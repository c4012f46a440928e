"""Bad input data, end to end through the loaders and the command-line tools.

The awkward dataset (see conftest) holds grayscale, RGBA, CMYK and EXIF-rotated images, an image
with only crowd annotations, boxes of zero/negative size or outside the image, masks reaching out
of the image, duplicate and zero annotation ids, non-contiguous category ids and an image far
larger than the max size. Expected values are the hand-written ones of the fixture.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter

import pytest
import torch

import eval as eval_cli
import train
from idip.config import get_cfg
from idip.data import build_test_loader, build_train_loader
from idip.data.datasets import get_dataset, register_from_cfg
from idip.data.image_io import ImageReadError, TooManyUnreadableImagesError
from idip.engine.trainer import Trainer
from tests.engine.tiny_model import tiny_cfg_opts
from tests.reliability.conftest import custom_dataset_opts, one_error_line

MAX_SIZE = 64


def _cfg(data: dict, name: str = "awkward"):
    cfg = get_cfg()
    cfg.DATASETS.CUSTOM = [{"NAME": name, "JSON": data["json"], "IMAGES": data["images"]}]
    cfg.DATASETS.TRAIN = (name,)
    cfg.DATASETS.TEST = (name,)
    cfg.INPUT.MIN_SIZE_TRAIN = (32, 48)
    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "range"
    cfg.INPUT.MAX_SIZE_TRAIN = MAX_SIZE
    cfg.INPUT.MIN_SIZE_TEST = 40
    cfg.INPUT.MAX_SIZE_TEST = MAX_SIZE
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.TEST.IMS_PER_BATCH = 2
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SEED = 3
    return cfg


def test_awkward_dataset_through_the_train_loader(awkward_dataset):
    expected = awkward_dataset["expected"]
    cfg = _cfg(awkward_dataset)
    register_from_cfg(cfg)
    info = get_dataset("awkward")
    assert info.thing_classes == ["box", "tri", "ring"]  # sorted by category id 3, 7, 10
    assert info.contiguous_to_category_id == [3, 7, 10]

    loader = build_train_loader(cfg)
    seen = Counter()
    for _ in range(8):  # 8 training images (the crowd-only one is filtered), 2 per batch: 2 epochs
        for sample in next(loader):
            name = os.path.basename(sample["file_name"])
            seen[name] += 1
            image, inst = sample["image"], sample["instances"]
            assert image.dtype == torch.uint8 and image.shape[0] == 3
            h, w = image.shape[1:]
            assert max(h, w) <= MAX_SIZE, name
            assert (sample["height"], sample["width"]) == expected[name]["hw"]
            # portrait stays portrait (the EXIF rotation was applied before resizing)
            assert (h > w) == (expected[name]["hw"][0] > expected[name]["hw"][1]), name
            classes = inst["classes"].tolist()
            assert sorted(classes) == sorted(expected[name]["classes"]), name
            boxes = inst["boxes"]
            assert boxes.shape == (len(classes), 4)
            assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all(), name
            assert (boxes >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all(), (
                name
            )
            assert inst["masks"].shape == (len(classes), h, w) and inst["masks"].dtype == torch.bool
            assert inst["masks"].flatten(1).any(1).all(), f"{name}: an empty mask"
    assert set(seen) == {n for n, e in expected.items() if e["classes"]}
    assert all(count == 2 for count in seen.values())


def test_awkward_dataset_through_the_test_loader(awkward_dataset):
    expected = awkward_dataset["expected"]
    samples = [s for batch in build_test_loader(_cfg(awkward_dataset), "awkward") for s in batch]
    by_name = {os.path.basename(s["file_name"]): s for s in samples}
    assert len(samples) == len(expected) and set(by_name) == set(expected)  # crowd-only included
    for name, sample in by_name.items():
        assert (sample["height"], sample["width"]) == expected[name]["hw"]
        h, w = sample["image"].shape[1:]
        assert max(h, w) <= MAX_SIZE and sample["image"].shape[0] == 3
        assert "instances" not in sample
    gray = by_name["gray.png"]["image"]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    exif = by_name["exif.jpg"]["image"]
    assert exif.shape[1] > exif.shape[2]  # 48 high, 20 wide after the rotation


def _truncate(path: str) -> None:
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 3])


def _train_argv(out, data, max_iter, *extra):
    return [
        *tiny_cfg_opts(str(out), max_iter),
        *custom_dataset_opts("awkward", data["json"], data["images"]),
        "DATASETS.TRAIN",
        "('awkward',)",
        "INPUT.MIN_SIZE_TRAIN",
        "(32,)",
        "INPUT.MAX_SIZE_TRAIN",
        str(MAX_SIZE),
        "INPUT.MIN_SIZE_TEST",
        "40",
        "INPUT.MAX_SIZE_TEST",
        str(MAX_SIZE),
        "SOLVER.IMS_PER_BATCH",
        "2",
        *extra,
    ]


def test_train_cli_skips_a_corrupt_image_naming_it(awkward_dataset, tmp_path, capsys):
    bad = os.path.join(awkward_dataset["images"], "rgb.png")
    _truncate(bad)
    # 1 of 8 training images is bad: allowed with a 20% budget; 5 iterations = 10 draws > 1 epoch
    argv = _train_argv(
        tmp_path / "run", awkward_dataset, 5, "DATALOADER.MAX_BAD_IMAGE_FRACTION", "0.2"
    )
    assert train.cli(argv, trainer_cls=Trainer) == 0
    log = open(tmp_path / "run" / "log.txt").read()
    assert f"skipped unreadable training image '{bad}'" in log
    assert (tmp_path / "run" / "model_final.pth").is_file()


def test_train_cli_aborts_when_more_than_one_percent_fail(awkward_dataset, tmp_path, capsys):
    bad = os.path.join(awkward_dataset["images"], "gray.png")
    _truncate(bad)
    argv = _train_argv(tmp_path / "run", awkward_dataset, 6)  # default budget: 1% of 8 images
    assert train.cli(argv, trainer_cls=Trainer) != 0
    err = one_error_line(capsys.readouterr().err)
    assert bad in err and "MAX_BAD_IMAGE_FRACTION" in err
    assert not (tmp_path / "run" / "model_final.pth").exists()


def test_eval_cli_corrupt_image_is_an_error_naming_it(awkward_dataset, tmp_path, capsys):
    argv = _train_argv(tmp_path / "run", awkward_dataset, 1, "SOLVER.CHECKPOINT_PERIOD", "0")
    assert train.cli(argv, trainer_cls=Trainer) == 0
    bad = os.path.join(awkward_dataset["images"], "cmyk.jpg")
    _truncate(bad)
    capsys.readouterr()
    rc = eval_cli.run_cli(
        eval_cli.main,
        [
            *argv,
            "DATASETS.TEST",
            "('awkward',)",
            "OUTPUT_DIR",
            str(tmp_path / "eval"),
            "MODEL.WEIGHTS",
            str(tmp_path / "run" / "model_final.pth"),
        ],
    )
    assert rc != 0
    err = one_error_line(capsys.readouterr().err)
    assert bad in err


@pytest.mark.parametrize("what", ["json", "images"])
def test_missing_annotation_file_or_image_folder_stops_before_training(
    awkward_dataset, tmp_path, capsys, what
):
    data = dict(awkward_dataset)
    missing = str(tmp_path / ("gone.json" if what == "json" else "gone_images"))
    data[what] = missing
    argv = _train_argv(tmp_path / "run", data, 2)
    assert train.cli(argv, trainer_cls=Trainer) == 2
    err = one_error_line(capsys.readouterr().err)
    assert missing in err
    assert (
        not any(f.endswith(".pth") for f in os.listdir(tmp_path / "run"))
        if (tmp_path / "run").exists()
        else True
    )
    metrics = tmp_path / "run" / "metrics.json"
    assert not metrics.exists() or not metrics.read_text().strip()  # not a single iteration ran


def test_bad_image_errors_are_typed(awkward_dataset):
    """The loader's errors are the documented types (so the CLI can print them in one line)."""
    bad = os.path.join(awkward_dataset["images"], "large.png")
    _truncate(bad)
    cfg = _cfg(awkward_dataset)
    with pytest.raises(TooManyUnreadableImagesError, match="large.png"):
        loader = build_train_loader(cfg)
        for _ in range(8):
            next(loader)
    with pytest.raises(ImageReadError, match="large.png"):
        for _ in build_test_loader(cfg, "awkward"):
            pass
    shutil.rmtree(awkward_dataset["images"])
    with pytest.raises(FileNotFoundError, match="images"):
        build_train_loader(cfg)


def test_an_image_whose_size_differs_from_the_json_says_why(awkward_dataset, tmp_path, capsys):
    """#21 item 12: the error gives the decoded and the annotated sizes, not just "could not be read"."""
    with open(awkward_dataset["json"]) as f:
        data = json.load(f)
    for image in data["images"]:
        if image["file_name"] == "gray.png":
            image["height"], image["width"] = 16, 64  # the file is 32 x 32
    with open(awkward_dataset["json"], "w") as f:
        json.dump(data, f)
    argv = _train_argv(tmp_path / "run", awkward_dataset, 6)  # default budget: 1% of 8 images
    assert train.cli(argv, trainer_cls=Trainer) == 2
    err = one_error_line(capsys.readouterr().err)
    assert "gray.png" in err
    assert "decoded size (h=32, w=32) differs from the annotation's (h=16, w=64)" in err
