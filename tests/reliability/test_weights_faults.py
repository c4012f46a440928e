"""Bad ``MODEL.WEIGHTS`` files through ``train.py`` and ``eval.py``: one ``error:`` line naming the
file, a non-zero exit, no traceback, and no code from the file ever runs."""

from __future__ import annotations

import builtins
import os
import pickle

import pytest
import torch

import eval as eval_cli
import train
from idip.engine.checkpoint import CHECKPOINT_FORMAT
from idip.modeling.backbone import ResNet
from tests.engine.tiny_model import TinyTestModel, TinyTrainer, tiny_cfg_opts
from tests.modeling.backbone.test_weights import _caffe2_blobs, save_pkl
from tests.reliability.conftest import one_error_line
from tests.reliability.test_model_edge_inputs import ROOT, _model
from tests.reliability.test_model_weights import _opts


class _OpensAFile:
    """Unpickling this calls ``open(path, "w")``: a harmless but visible side effect."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


def _tiny_state() -> dict[str, torch.Tensor]:
    from idip.config import setup_cfg

    return TinyTestModel(setup_cfg(None, tiny_cfg_opts("unused"))).state_dict()


def _full_checkpoint(meta: str, state: dict) -> dict:
    return {"format": CHECKPOINT_FORMAT, "meta_architecture": meta, "iteration": 0, "model": state}


def _run(tool: str, out_dir, weights: str) -> int:
    opts = [*tiny_cfg_opts(str(out_dir), 2), "MODEL.WEIGHTS", weights]
    if tool == "train":
        return train.cli(opts, trainer_cls=TinyTrainer)
    return eval_cli.run_cli(eval_cli.main, [*opts, "DATASETS.TEST", "('never_reached',)"])


def _write_bad_file(kind: str, tmp_path) -> tuple[str, str]:
    """Writes one bad weights file; returns (path, a word the error must contain)."""
    if kind == "missing":
        return str(tmp_path / "absent.pth"), "not found"
    if kind == "garbage":
        path = tmp_path / "garbage.pth"
        path.write_bytes(b"this is not a checkpoint" * 10)
        return str(path), "corrupt"
    if kind == "truncated":
        path = tmp_path / "truncated.pth"
        torch.save(_full_checkpoint("TinyTestModel", _tiny_state()), path)
        path.write_bytes(path.read_bytes()[:300])
        return str(path), "corrupt"
    if kind == "truncated_pkl":
        path = tmp_path / "truncated.pkl"
        path.write_bytes(pickle.dumps({"model": {"res2.0.conv1.weight": list(range(100))}})[:40])
        return str(path), "pickle"
    if kind == "other_model":
        path = tmp_path / "condinst.pth"
        torch.save(_full_checkpoint("CondInst", _tiny_state()), path)
        return str(path), "CondInst"
    if kind == "shapes":
        state = _tiny_state()
        state["head.weight"] = torch.zeros(3, 8)
        path = tmp_path / "shapes.pth"
        torch.save(_full_checkpoint("TinyTestModel", state), path)
        return str(path), "head.weight (checkpoint (3, 8) vs model (8, 8))"
    raise AssertionError(kind)


@pytest.mark.parametrize("tool", ["train", "eval"])
@pytest.mark.parametrize(
    "kind", ["missing", "garbage", "truncated", "truncated_pkl", "other_model", "shapes"]
)
def test_bad_weights_file_is_one_clear_line(tool, kind, tmp_path, capsys):
    path, word = _write_bad_file(kind, tmp_path)
    assert _run(tool, tmp_path / "out", path) == 2
    err = one_error_line(capsys.readouterr().err)
    assert path in err and word in err, err
    assert not (tmp_path / "out" / "model_final.pth").exists()


@pytest.mark.parametrize("tool", ["train", "eval"])
@pytest.mark.parametrize("suffix", [".pth", ".pkl"])
def test_malicious_weights_file_cannot_run_code(tool, suffix, tmp_path, capsys):
    marker = tmp_path / "code_ran"
    path = tmp_path / f"evil{suffix}"
    payload = {"model": {"head.weight": _OpensAFile(str(marker))}}
    if suffix == ".pth":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))

    # The file really is dangerous: an unrestricted load runs the payload.
    probe = tmp_path / "probe"
    if suffix == ".pth":
        torch.save({"model": _OpensAFile(str(probe))}, tmp_path / "probe.pth")
        torch.load(tmp_path / "probe.pth", weights_only=False)
    else:
        pickle.loads(pickle.dumps({"model": _OpensAFile(str(probe))}))
    assert probe.exists()

    assert _run(tool, tmp_path / "out", str(path)) == 2
    err = one_error_line(capsys.readouterr().err)
    assert str(path) in err, err
    assert not marker.exists()


def test_good_full_checkpoint_through_both_tools(tmp_path, capsys):
    """The control case: a checkpoint of the same model loads in train.py and eval.py."""
    assert train.cli(tiny_cfg_opts(str(tmp_path / "a"), 2), trainer_cls=TinyTrainer) == 0
    weights = str(tmp_path / "a" / "model_final.pth")
    assert _run("train", tmp_path / "b", weights) == 0
    assert (
        f"loaded TinyTestModel weights from {weights}" in (tmp_path / "b" / "log.txt").read_text()
    )
    capsys.readouterr()
    # eval gets past the weights and stops at the unregistered dataset: one line naming it
    assert _run("eval", tmp_path / "c", weights) == 2
    assert "never_reached" in one_error_line(capsys.readouterr().err)


# ------------------------------------------------------------------------------------------------
# ImageNet backbone weights for the COCO configs (#23 item 4)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tool, config, depth",
    [("train", "IDIP_R50.yaml", 50), ("eval", "CondInst_R101_3x.yaml", 101)],
)
def test_missing_pretrained_backbone_says_where_to_get_it(
    tool, config, depth, tmp_path, monkeypatch, capsys
):
    """The COCO configs name pretrained/R-{depth}.pth: the error says which files work, where
    they are, the settings each needs and how to fetch one."""
    monkeypatch.chdir(tmp_path)  # no pretrained/ here
    opts = [
        "--config-file",
        os.path.join(ROOT, "configs", config),
        "MODEL.DEVICE",
        "cpu",
        "OUTPUT_DIR",
        str(tmp_path / "out"),
        "DATASETS.TRAIN",
        "('synthetic',)",
        "DATASETS.TEST",
        "('never_reached',)" if tool == "eval" else "()",
    ]
    if tool == "train":
        assert train.cli(opts, trainer_cls=TinyTrainer) == 2
    else:
        assert eval_cli.run_cli(eval_cli.main, opts) == 2
    err = one_error_line(capsys.readouterr().err)
    path = f"pretrained/R-{depth}.pth"
    assert f"MODEL.WEIGHTS file not found: {path}. ImageNet ResNet-{depth} weights" in err
    assert f"ResNet{depth}_Weights.IMAGENET1K_V1 https://download.pytorch.org/models/" in err
    assert f"ImageNetPretrained/MSRA/R-{depth}.pkl" in err
    assert 'MODEL.RESNETS.STRIDE_IN_1X1 True MODEL.PIXEL_STD "[1.0, 1.0, 1.0]"' in err
    assert f"mkdir -p pretrained && curl -L -o {path} https://download.pytorch.org/" in err


def _small_msra_r50(tmp_path) -> str:
    """MSRA-style R-50.pkl for the shapes config's half-width ResNet (stem and res2 at 32)."""
    torch.manual_seed(3)
    source = ResNet(
        50,
        out_features=("res3", "res4", "res5"),
        norm="BN",
        stride_in_1x1=True,
        stem_channels=32,
        res2_channels=32,
    )
    return save_pkl(tmp_path / "R-50.pkl", _caffe2_blobs(source), protocol=2)


def test_msra_backbone_demands_its_settings_then_trains(tmp_path, capsys):
    _model("IDIP")  # skips while the config is absent
    path = _small_msra_r50(tmp_path)
    opts = _opts("IDIP", tmp_path / "a", "MODEL.RESNETS.DEPTH", "50", "MODEL.WEIGHTS", path)
    assert train.cli(opts, trainer_cls=TinyTrainer) == 2
    err = one_error_line(capsys.readouterr().err)
    assert f"'{path}' holds MSRA/Caffe2-style weights" in err and "caffe2 names" in err, err
    assert err.endswith(
        'set MODEL.RESNETS.STRIDE_IN_1X1 True MODEL.PIXEL_STD "[1.0, 1.0, 1.0]" '
        "(command line or config)"
    ), err
    assert not (tmp_path / "a" / "model_final.pth").exists()

    # the overrides the message names, as a user pastes them
    settings = ["MODEL.RESNETS.STRIDE_IN_1X1", "True", "MODEL.PIXEL_STD", "[1.0, 1.0, 1.0]"]
    opts = _opts("IDIP", tmp_path / "b", "MODEL.RESNETS.DEPTH", "50", "MODEL.WEIGHTS", path)
    assert train.cli([*opts, *settings], trainer_cls=TinyTrainer) == 0
    log = (tmp_path / "b" / "log.txt").read_text()
    assert f"loaded backbone weights from {path}: loaded 156 tensors from caffe2 weights" in log
    assert "0 missing, 0 unexpected, 0 shape-mismatched" in log
    assert "flipped conv1 input channels" in log
    assert "pixel std 1" not in log  # the settings are right: no note asking for them
