"""The engine with the real data pipeline (a tiny generated shapes set) and TinyTestModel:
exact resume through idip.data's loader (with gradient accumulation) and eval.py."""

import json
import os

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

import eval as eval_cli
from idip.config import setup_cfg
from idip.data.datasets import get_dataset, register_from_cfg
from idip.data.shapes import generate_split, shapes_paths
from idip.engine.checkpoint import Checkpointer
from idip.engine.cli import run_cli
from idip.engine.evaluate import evaluate_datasets
from idip.engine.trainer import Trainer
from idip.modeling.build import register_meta_arch
from tests.engine.tiny_model import TinyTestModel, tiny_cfg_opts


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("datasets"))
    generate_split(root, "train", 8, seed=3)
    generate_split(root, "val", 4, seed=3)
    return root


def _cfg(root, out, max_iter, **extra):
    json_train, images_train = shapes_paths(root, "train")
    json_val, images_val = shapes_paths(root, "val")
    custom = [
        {"NAME": "mini_train", "JSON": json_train, "IMAGES": images_train},
        {"NAME": "mini_val", "JSON": json_val, "IMAGES": images_val},
    ]
    opts = tiny_cfg_opts(
        str(out),
        max_iter,
        **{
            "DATASETS.ROOT": root,
            "DATASETS.TRAIN": ("mini_train",),
            "DATASETS.TEST": (),
            "INPUT.MIN_SIZE_TRAIN": (48, 64),
            "INPUT.MAX_SIZE_TRAIN": 96,
            "INPUT.MIN_SIZE_TEST": 64,
            "INPUT.MAX_SIZE_TEST": 96,
            **extra,
        },
    )
    return setup_cfg(None, opts + ["DATASETS.CUSTOM", repr(custom)])


class Crash(Trainer):
    def run_step(self, loader, iteration):
        if iteration == 3:
            raise RuntimeError("simulated crash")
        return super().run_step(loader, iteration)


def test_resume_with_real_loader_and_accumulation(shapes_root, tmp_path):
    extra = {"SOLVER.GRAD_ACCUM_STEPS": 2, "SOLVER.CHECKPOINT_PERIOD": 2}
    full = Trainer(_cfg(shapes_root, tmp_path / "full", 5, **extra))
    full.train()
    crashed = Crash(_cfg(shapes_root, tmp_path / "res", 5, **extra))
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashed.train()
    resumed = Trainer(_cfg(shapes_root, tmp_path / "res", 5, **extra), resume=True)
    assert resumed.start_iter == 2
    resumed.train()
    want, got = full.model.state_dict(), resumed.model.state_dict()
    for key in want:
        assert torch.equal(want[key], got[key]), key


def test_eval_cli_prints_ap_tables(shapes_root, tmp_path, capsys):
    out = tmp_path / "run"
    Trainer(_cfg(shapes_root, out, 2)).train()
    code = run_cli(
        eval_cli.main,
        [
            "--config-file",
            str(out / "config.yaml"),
            "MODEL.WEIGHTS",
            str(out / "model_final.pth"),
            "DATASETS.TEST",
            "('mini_val',)",
            "OUTPUT_DIR",
            str(tmp_path / "eval"),
        ],
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "mini_val:" in printed and "bbox" in printed and "segm" in printed and "AP50" in printed
    # One table per dataset, in percent: not also pycocotools' 12-line summary in fractions.
    assert printed.count("task  |") == 1 and "Average Precision" not in printed
    results = json.loads(printed.strip().splitlines()[-1])
    ap = results["mini_val"]["segm"]["AP"]
    assert 0.0 <= ap <= 100.0


def test_final_evaluation_in_training(shapes_root, tmp_path):
    trainer = Trainer(_cfg(shapes_root, tmp_path, 2, **{"DATASETS.TEST": ("mini_val",)}))
    results = trainer.train()
    assert set(results["mini_val"]) >= {"bbox", "segm"}
    records = [json.loads(line) for line in open(tmp_path / "metrics.json")]
    assert "eval/mini_val/segm/AP" in records[-1]
    assert os.path.isdir(tmp_path / "inference" / "mini_val")


class NoisyInference(TinyTestModel):
    """Draws random numbers at inference, as IDIP does for its initial boxes."""

    def forward(self, batch):
        if not self.training:
            torch.randn(10)
        return super().forward(batch)


def test_evaluation_leaves_training_rng_and_mode_unchanged(shapes_root, tmp_path):
    cfg = _cfg(shapes_root, tmp_path, 1, **{"DATASETS.TEST": ("mini_val",)})
    model = NoisyInference(cfg).train()
    state = torch.get_rng_state()
    results = evaluate_datasets(cfg, model)
    assert "segm" in results["mini_val"]
    assert torch.equal(torch.get_rng_state(), state)
    assert model.training


@register_meta_arch("GroundTruthOracle")
class GroundTruthOracle(torch.nn.Module):
    """Predicts each test image's ground truth (from the annotation file) with score 1."""

    def __init__(self, cfg):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        register_from_cfg(cfg)
        info = get_dataset(cfg.DATASETS.TEST[0])
        self.coco = COCO(info.json_file)
        self.category_to_label = {c: i for i, c in enumerate(info.contiguous_to_category_id)}

    def forward(self, batch):
        results = []
        for sample in batch:
            anns = [a for a in self.coco.imgToAnns[sample["image_id"]] if not a.get("iscrowd", 0)]
            boxes = torch.tensor(
                [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
            ).reshape(-1, 4)
            masks = (
                np.stack([self.coco.annToMask(a) for a in anns])
                if anns
                else np.zeros((0, sample["height"], sample["width"]))
            )
            results.append(
                {
                    "boxes": boxes.float(),
                    "scores": torch.ones(len(anns)),
                    "labels": torch.tensor(
                        [self.category_to_label[a["category_id"]] for a in anns], dtype=torch.int64
                    ),
                    "masks": torch.from_numpy(masks).bool(),
                }
            )
        return results


def test_eval_cli_scores_ground_truth_predictions_100(shapes_root, tmp_path, capsys):
    cfg = _cfg(
        shapes_root,
        tmp_path,
        1,
        **{"MODEL.META_ARCHITECTURE": "GroundTruthOracle", "DATASETS.TEST": ("mini_val",)},
    )
    with open(tmp_path / "oracle.yaml", "w") as f:
        f.write(cfg.dump())
    weights = Checkpointer(GroundTruthOracle(cfg), str(tmp_path), "GroundTruthOracle").save(
        "model_final", 0
    )
    code = run_cli(
        eval_cli.main, ["--config-file", str(tmp_path / "oracle.yaml"), "MODEL.WEIGHTS", weights]
    )
    assert code == 0
    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["mini_val"]
    assert results["bbox"]["AP"] == pytest.approx(100.0)
    assert results["segm"]["AP"] == pytest.approx(100.0)
