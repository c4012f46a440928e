"""tools/export.py: writes a torch.export file and an ONNX file that load and run, and reports
user errors in one line."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from idip.engine.checkpoint import CHECKPOINT_FORMAT
from idip.engine.cli import run_cli
from tests.modeling.test_export import IMAGE_SIZE, TINY, needs_onnx, tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _tool():
    spec = importlib.util.spec_from_file_location(
        "export_tool", os.path.join(ROOT, "tools", "export.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _argv(arch: str, fmt: str, output, *extra: str) -> list[str]:
    h, w = IMAGE_SIZE[arch]
    overrides = [str(x) if not isinstance(x, list) else repr(x) for x in TINY[arch]]
    return [
        "--format", fmt, "--output", str(output), "--height", str(h), "--width", str(w),
        *overrides, *extra,
    ]  # fmt: skip


def _weights(arch: str, folder) -> str:
    """A checkpoint of the tiny model whose heads give detections (untrained ones give none)."""
    path = str(folder / f"{arch}.pth")
    state = tiny_model(arch).state_dict()
    torch.save(
        {"format": CHECKPOINT_FORMAT, "meta_architecture": arch, "iteration": 0, "model": state},
        path,
    )
    return path


def test_torch_export_file_loads_and_runs_its_example_inputs(tmp_path, capsys):
    output = tmp_path / "sub" / "idip.pt2"
    weights = _weights("IDIP", tmp_path)
    argv = _argv("IDIP", "torch_export", output, "--num-detections", "7", "MODEL.WEIGHTS", weights)
    code = run_cli(_tool().main, argv)
    assert code == 0, capsys.readouterr().err
    program = torch.export.load(str(output))
    image, seed = program.example_inputs[0]
    assert image.shape == (1, 3, *IMAGE_SIZE["IDIP"]) and seed.dtype == torch.int64
    boxes, scores, labels, masks, valid = program.module()(image, seed)
    assert boxes.shape == (7, 4) and masks.shape == (7, *IMAGE_SIZE["IDIP"])
    assert valid.any() and masks[valid].any()
    log = "".join(capsys.readouterr())
    assert f"loaded IDIP weights from {weights}" in log
    assert f"checked on the example inputs: {int(valid.sum())} valid detection(s) (eager" in log
    assert "same rows" in log


@needs_onnx
def test_onnx_file_runs_in_onnxruntime(tmp_path, capsys):
    import onnxruntime

    output = tmp_path / "condinst.onnx"
    weights = _weights("CondInst", tmp_path)
    argv = _argv("CondInst", "onnx", output, "--no-check", "MODEL.WEIGHTS", weights)
    code = run_cli(_tool().main, argv)
    assert code == 0, capsys.readouterr().err
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    image = torch.rand(1, 3, *IMAGE_SIZE["CondInst"]).numpy() * 255
    boxes, scores, labels, masks, valid = session.run(None, {"image": image})
    assert boxes.shape == (40, 4) and valid.dtype == bool  # POST_NMS_TOPK_TEST of TINY
    assert valid.any() and (scores[valid] > 0).all() and not scores[~valid].any()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["MODEL.WEIGHTS", "/no/such/weights.pth"], "error: MODEL.WEIGHTS file not found"),
        (["--num-detections", "-3"], "error: --num-detections must be >= 1"),
        (["--height", "-5"], "error: the exported image size must be positive"),
    ],
)
def test_user_errors_are_one_line(tmp_path, capsys, extra, message):
    code = run_cli(_tool().main, _argv("CondInst", "torch_export", tmp_path / "x.pt2") + extra)
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert not (tmp_path / "x.pt2").exists()
