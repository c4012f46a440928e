"""train.py / eval.py / demo.py with the real models and their shapes configs (tiny sizes, CPU).

Skipped while a model, its config or the compiled idip._C is missing."""

import json
import os

import numpy as np
import pytest
from PIL import Image

import demo
import eval as eval_cli
import train
from idip.data.shapes import generate_split, shapes_paths
from idip.engine.cli import run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = {
    "IDIP": os.path.join(ROOT, "configs", "shapes", "IDIP_R18.yaml"),
    "CondInst": os.path.join(ROOT, "configs", "shapes", "CondInst_R18.yaml"),
}


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("datasets"))
    generate_split(root, "train", 8, seed=5)
    generate_split(root, "val", 3, seed=5)
    return root


def _opts(root, out, max_iter):
    json_train, images_train = shapes_paths(root, "train")
    json_val, images_val = shapes_paths(root, "val")
    custom = [
        {"NAME": "mini_train", "JSON": json_train, "IMAGES": images_train},
        {"NAME": "mini_val", "JSON": json_val, "IMAGES": images_val},
    ]
    return [
        "DATASETS.CUSTOM",
        repr(custom),
        "DATASETS.TRAIN",
        "('mini_train',)",
        "DATASETS.TEST",
        "('mini_val',)",
        "MODEL.DEVICE",
        "cpu",
        "SOLVER.IMS_PER_BATCH",
        "2",
        "SOLVER.MAX_ITER",
        str(max_iter),
        "SOLVER.STEPS",
        f"({max_iter + 10},)",
        "SOLVER.WARMUP_ITERS",
        "1",
        "SOLVER.CHECKPOINT_PERIOD",
        "2",
        "INPUT.MIN_SIZE_TRAIN",
        "(96,)",
        "INPUT.MAX_SIZE_TRAIN",
        "128",
        "INPUT.MIN_SIZE_TEST",
        "96",
        "INPUT.MAX_SIZE_TEST",
        "128",
        "DATALOADER.NUM_WORKERS",
        "0",
        "SEED",
        "3",
        "LOG_PERIOD",
        "1",
        "OUTPUT_DIR",
        str(out),
    ]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["IDIP", "CondInst"])
def test_train_resume_eval_demo(arch, shapes_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert train.cli(["--config-file", CONFIGS[arch], *_opts(shapes_root, out, 2)]) == 0
    records = [json.loads(line) for line in open(out / "metrics.json")]
    assert [r["iteration"] for r in records if "total_loss" in r] == [0, 1]
    assert all(np.isfinite(r["total_loss"]) for r in records if "total_loss" in r)
    assert "eval/mini_val/segm/AP" in records[-1]

    # resuming with a larger MAX_ITER continues at iteration 2
    assert train.cli(["--config-file", CONFIGS[arch], "--resume", *_opts(shapes_root, out, 3)]) == 0
    assert "continuing at iteration 2" in open(out / "log.txt").read()

    capsys.readouterr()
    weights = str(out / "model_final.pth")
    code = run_cli(
        eval_cli.main,
        [
            "--config-file",
            CONFIGS[arch],
            *_opts(shapes_root, tmp_path / "eval", 1),
            "MODEL.WEIGHTS",
            weights,
        ],
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "bbox" in printed and "segm" in printed

    image = tmp_path / "img.png"
    Image.fromarray(
        np.asarray(Image.open(os.path.join(shapes_paths(shapes_root, "val")[1], "000000.png")))
    ).save(image)
    code = run_cli(
        demo.main,
        [
            "--config-file",
            CONFIGS[arch],
            "--input",
            str(image),
            "--output",
            str(tmp_path / "vis.png"),
            "--confidence-threshold",
            "0.0",
            "--opts",
            *_opts(shapes_root, tmp_path / "demo", 1),
            "MODEL.WEIGHTS",
            weights,
        ],
    )
    assert code == 0
    assert Image.open(tmp_path / "vis.png").size == Image.open(image).size
