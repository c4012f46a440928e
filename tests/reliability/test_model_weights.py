"""MODEL.WEIGHTS with the real models through ``train.py`` / ``eval.py``: backbone weights loaded
on purpose report the keys they skipped; a checkpoint of the other model, or of the same model
with other shapes, is one clear error line."""

from __future__ import annotations

import json

import pytest
import torch

import eval as eval_cli
import train
from idip.engine.checkpoint import Checkpointer
from idip.modeling import META_ARCH_REGISTRY
from tests.engine.tiny_model import TinyTrainer
from tests.reliability.conftest import custom_dataset_opts, one_error_line
from tests.reliability.test_model_edge_inputs import CONFIGS, SHRINK, _model


def _opts(arch: str, out_dir, *extra: str) -> list[str]:
    return [
        "--config-file",
        CONFIGS[arch],
        "MODEL.DEVICE",
        "cpu",
        *SHRINK[arch],
        "SOLVER.MAX_ITER",
        "1",
        "SOLVER.STEPS",
        "(10,)",
        "SOLVER.WARMUP_ITERS",
        "0",
        "SOLVER.IMS_PER_BATCH",
        "2",
        "SOLVER.CHECKPOINT_PERIOD",
        "0",
        "DATASETS.TRAIN",
        "('synthetic',)",
        "DATASETS.TEST",
        "()",
        "DATALOADER.NUM_WORKERS",
        "0",
        "SEED",
        "1",
        "OUTPUT_DIR",
        str(out_dir),
        *extra,
    ]


def test_backbone_weights_on_purpose_list_what_was_skipped(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    _model("IDIP")  # skips while the config is absent
    state = torchvision.models.resnet18(weights=None).state_dict()
    del state["layer1.0.conv1.weight"]  # missing
    state["layer4.1.conv2.weight"] = torch.zeros(512, 512, 1, 1)  # wrong shape
    state["extra_head.weight"] = torch.zeros(3)  # no place in the model
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)

    # the shapes config's ResNet-18 is half width; torchvision's weights fit the standard one
    standard_width = [
        "MODEL.RESNETS.STEM_OUT_CHANNELS",
        "64",
        "MODEL.RESNETS.RES2_OUT_CHANNELS",
        "64",
    ]
    opts = _opts("IDIP", tmp_path / "run", "MODEL.WEIGHTS", str(path), *standard_width)
    assert train.cli(opts, trainer_cls=TinyTrainer) == 0
    log = (tmp_path / "run" / "log.txt").read_text()
    assert f"loaded backbone weights from {path}" in log
    # the mismatched tensor is not loaded, so it is also reported missing (left as initialised)
    assert "2 missing" in log and "1 unexpected" in log and "1 shape-mismatched" in log
    assert "layer4.1.conv2.weight [512, 512, 1, 1] vs [512, 512, 3, 3]" in log
    assert "extra_head.weight" in log and "layer1.0.conv1.weight" in log


@pytest.mark.parametrize("tool", ["train", "eval"])
def test_checkpoint_of_the_other_model_or_other_shapes(tool, tmp_path, capsys):
    condinst, _ = _model("CondInst")
    _model("IDIP")
    other = Checkpointer(condinst, str(tmp_path / "condinst"), "CondInst").save("model_final", 0)
    idip_5, _ = _model("IDIP", "MODEL.IDIP.NUM_CLASSES", "5")
    wrong = Checkpointer(idip_5, str(tmp_path / "idip5"), "IDIP").save("model_final", 0)

    def run(weights: str) -> str:
        opts = _opts("IDIP", tmp_path / "out", "MODEL.WEIGHTS", weights)
        if tool == "train":
            rc = train.cli(opts, trainer_cls=TinyTrainer)
        else:
            rc = eval_cli.run_cli(eval_cli.main, [*opts, "DATASETS.TEST", "('never_reached',)"])
        assert rc == 2
        return one_error_line(capsys.readouterr().err)

    err = run(other)
    assert other in err and "CondInst" in err and "IDIP" in err
    err = run(wrong)
    assert wrong in err and "shape mismatches" in err and "(5" in err


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["IDIP", "CondInst"])
def test_real_model_trains_and_evaluates_on_the_awkward_dataset(
    arch, awkward_dataset, tmp_path, capsys
):
    """Every awkward image (grayscale, CMYK, EXIF, crowd-only, huge, ...) through the real model:
    2 training iterations, then eval.py with pycocotools on the same json."""
    _model(arch)
    from idip.engine.trainer import Trainer

    data = [
        *custom_dataset_opts("awkward", awkward_dataset["json"], awkward_dataset["images"]),
        "DATASETS.TRAIN",
        "('awkward',)",
        "DATASETS.TEST",
        "('awkward',)",
        "INPUT.MIN_SIZE_TRAIN",
        "(48,)",
        "INPUT.MAX_SIZE_TRAIN",
        "64",
        "INPUT.MIN_SIZE_TEST",
        "48",
        "INPUT.MAX_SIZE_TEST",
        "64",
        "TEST.IMS_PER_BATCH",
        "3",
    ]
    key = META_ARCH_REGISTRY[arch].num_classes_key
    # the configs say 4 classes (shapes); the awkward dataset has 3: one clear line, no training
    opts = _opts(arch, tmp_path / "run", *data, "SOLVER.MAX_ITER", "2")
    assert train.cli(opts, trainer_cls=Trainer) == 2
    err = one_error_line(capsys.readouterr().err)
    assert key in err and "'awkward' has 3 classes" in err
    assert not (tmp_path / "run" / "model_final.pth").exists()

    opts += [key, "3"]
    assert train.cli(opts, trainer_cls=Trainer) == 0
    capsys.readouterr()
    weights = str(tmp_path / "run" / "model_final.pth")
    rc = eval_cli.run_cli(
        eval_cli.main, [*opts, "MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(tmp_path / "eval")]
    )
    out = capsys.readouterr().out
    assert rc == 0
    results = json.loads(out.strip().splitlines()[-1])
    for task in ("bbox", "segm"):
        ap = results["awkward"][task]["AP"]
        assert ap == ap and 0.0 <= ap <= 100.0  # a number (not NaN) from pycocotools
