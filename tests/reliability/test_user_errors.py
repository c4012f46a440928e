"""#21 item 11: user mistakes in datasets and config values end in one `error:` line (exit 2)
naming what is wrong, before the first iteration, never in a traceback."""

from __future__ import annotations

import json
import os

import pytest

import train
from idip.engine.trainer import Trainer
from tests.engine.tiny_model import tiny_cfg_opts
from tests.reliability.conftest import custom_dataset_opts, one_error_line

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _edit_json(data, edit):
    with open(data["json"]) as f:
        content = json.load(f)
    result = edit(content)
    with open(data["json"], "w") as f:
        if isinstance(result, str):
            f.write(result)
        else:
            json.dump(content if result is None else result, f)


def _run(tmp_path, capsys, data, *opts):
    argv = [
        *tiny_cfg_opts(str(tmp_path / "run"), 2),
        *custom_dataset_opts("custom", data["json"], data["images"]),
        "DATASETS.TRAIN",
        "('custom',)",
        *opts,
    ]
    code = train.cli(argv, trainer_cls=Trainer)
    err = one_error_line(capsys.readouterr().err)
    assert code == 2, err
    assert not (tmp_path / "run" / "model_final.pth").exists()  # stopped before training ended
    return err


def _duplicate_first_image(content):
    content["images"].append(dict(content["images"][0]))


def _unknown_category(content):
    content["annotations"][0]["category_id"] = 999


JSON_CASES = {
    "invalid json": (lambda c: "{ not json", "is not valid json"),
    "a list, not COCO": (lambda c: "[]", "not a COCO instances file"),
    "no categories": (lambda c: c.pop("categories") and None, "no 'categories'"),
    "empty categories": (lambda c: c.update(categories=[]), "no 'categories'"),
    "duplicate image ids": (_duplicate_first_image, "appears more than once"),
    "unknown category_id": (_unknown_category, "category_id 999"),
    "zero images": (
        lambda c: c.update(images=[], annotations=[]),
        "no training images with usable annotations",
    ),
    "no annotated image": (
        lambda c: c.update(annotations=[]),
        "no training images with usable annotations",
    ),
}


@pytest.mark.parametrize("case", list(JSON_CASES))
def test_bad_annotation_files(awkward_dataset, tmp_path, capsys, case):
    edit, expected = JSON_CASES[case]
    _edit_json(awkward_dataset, edit)
    err = _run(tmp_path, capsys, awkward_dataset)
    assert expected in err and (awkward_dataset["json"] in err or "custom" in err)


CONFIG_CASES = {
    "empty MIN_SIZE_TRAIN": (["INPUT.MIN_SIZE_TRAIN", "()"], "INPUT.MIN_SIZE_TRAIN"),
    "unknown sampling": (
        ["INPUT.MIN_SIZE_TRAIN_SAMPLING", "sometimes"],
        "INPUT.MIN_SIZE_TRAIN_SAMPLING",
    ),
    "negative workers": (["DATALOADER.NUM_WORKERS", "-1"], "DATALOADER.NUM_WORKERS"),
    "test batch 0": (["TEST.IMS_PER_BATCH", "0"], "TEST.IMS_PER_BATCH"),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_config_values(awkward_dataset, tmp_path, capsys, case):
    opts, expected = CONFIG_CASES[case]
    err = _run(tmp_path, capsys, awkward_dataset, *opts)
    assert expected in err
    if case == "test batch 0":  # checked before training, not after it, at evaluation
        assert not (tmp_path / "run" / "metrics.json").exists()


def test_custom_dataset_without_images(awkward_dataset, tmp_path, capsys):
    entry = repr([{"NAME": "custom", "JSON": awkward_dataset["json"]}])
    err = _run(tmp_path, capsys, awkward_dataset, "DATASETS.CUSTOM", entry)
    assert "DATASETS.CUSTOM[0]" in err and "missing keys ['IMAGES']" in err


def test_custom_dataset_named_like_a_built_in_one(awkward_dataset, tmp_path, capsys):
    err = _run(
        tmp_path,
        capsys,
        awkward_dataset,
        *custom_dataset_opts("shapes_train", awkward_dataset["json"], awkward_dataset["images"]),
    )
    assert "'shapes_train' is already a built-in dataset" in err


def test_condinst_mask_out_stride_that_does_not_divide(tmp_path, capsys):
    argv = [
        "--config-file",
        os.path.join(ROOT, "configs/shapes/CondInst_R18.yaml"),
        "MODEL.CONDINST.MASK_OUT_STRIDE",
        "3",
        "OUTPUT_DIR",
        str(tmp_path / "run"),
        "MODEL.DEVICE",
        "cpu",
    ]
    code = train.cli(argv, trainer_cls=Trainer)
    err = one_error_line(capsys.readouterr().err)
    assert code == 2 and "MODEL.CONDINST.MASK_OUT_STRIDE" in err
