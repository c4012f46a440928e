"""The authors' released checkpoints convert and load: every key of their state dicts (as listed
in authors_keys/*.keys.tsv: AdelaiDet CondInst R50 1x and R101 3x, IDIP authors' R50 and R101)
maps to one of ours, none is left over, and the converted models run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from idip.config import ConfigError, get_cfg
from idip.engine.checkpoint import CheckpointError, load_weights
from idip.modeling import build_model
from idip.modeling.authors_checkpoints import (
    ADELAIDET_CONDINST,
    IDIP_AUTHORS,
    convert_authors_checkpoint,
    detect_format,
)

ROOT = Path(__file__).resolve().parents[2]
PEERS = Path(__file__).resolve().parent / "authors_keys"
DTYPES = {"float32": torch.float32, "float64": torch.float64, "int64": torch.int64}
MSRA = [
    "MODEL.PIXEL_MEAN",
    "[123.675,116.28,103.53]",
    "MODEL.PIXEL_STD",
    "[1.0,1.0,1.0]",
    "MODEL.RESNETS.STRIDE_IN_1X1",
    "True",
]
CASES = {
    "adelaidet_condinst_MS_R_50_1x": ("configs/CondInst_R50_1x.yaml", MSRA, ADELAIDET_CONDINST),
    "adelaidet_condinst_MS_R_101_3x": ("configs/CondInst_R101_3x.yaml", MSRA, ADELAIDET_CONDINST),
    "idip_authors_res50": ("configs/IDIP_R50.yaml", [], IDIP_AUTHORS),
    "idip_authors_res101": ("configs/IDIP_R101.yaml", [], IDIP_AUTHORS),
}


def authors_state(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with the keys, shapes and dtypes of an authors' state dict; small weights
    and unit BN statistics, so that a forward pass stays finite."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for line in (PEERS / f"{name}.keys.tsv").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        key, shape, dtype = line.split("\t")
        shape = [int(s) for s in shape.strip("[]").split(",") if s.strip()]
        dtype = DTYPES[dtype]
        if not dtype.is_floating_point:
            state[key] = torch.zeros(shape, dtype=dtype)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen, dtype=dtype) + 0.5
        elif key.endswith(("norm.weight", "running_mean")) or ".1.weight" in key:
            state[key] = torch.randn(shape, generator=gen, dtype=dtype) * 0.1 + (
                key.endswith("weight")
            )
        else:
            state[key] = torch.randn(shape, generator=gen, dtype=dtype) * 0.02
    return state


def model_cfg(config: str, overrides: list[str]):
    cfg = get_cfg()
    cfg.merge_from_file(str(ROOT / config))
    cfg.merge_from_list(["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", *overrides])
    return cfg


@pytest.mark.parametrize("name", list(CASES))
def test_every_key_maps_and_the_converted_model_runs(name):
    config, overrides, fmt = CASES[name]
    state = authors_state(name)
    assert detect_format(state) == fmt
    conversion = convert_authors_checkpoint(state)
    assert conversion.unmapped == []
    assert conversion.mapped + len(conversion.folded) + len(conversion.ignored) == len(state)
    # few boxes at test: the forward only has to show that the converted weights run
    model = build_model(model_cfg(config, overrides + ["MODEL.IDIP.NUM_PROPOSALS_TEST", "20"]))
    own = model.state_dict()
    assert set(conversion.state) == set(own)
    assert all(conversion.state[k].shape == own[k].shape for k in own)
    model.load_state_dict(conversion.state, strict=True)
    model.eval()
    image = (torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(1)) * 255).to(
        torch.uint8
    )
    with torch.no_grad():
        (out,) = model([{"image": image, "height": 96, "width": 128, "image_id": 0}])
    assert out["masks"].shape[1:] == (96, 128) and out["boxes"].shape[0] == out["scores"].shape[0]
    assert torch.isfinite(out["boxes"]).all() and torch.isfinite(out["scores"]).all()


def test_mask_head_conv_biases_fold_into_batch_norm_exactly():
    """The authors' conv(+bias) -> BN equals ours: conv without bias -> BN whose running mean
    absorbed the bias (eval mode)."""
    state = authors_state("idip_authors_res50", seed=3)
    conversion = convert_authors_checkpoint(state)
    assert conversion.folded == [f"roi_head.mask_head.convs.{i}.0.bias" for i in range(4)]
    theirs = nn.Sequential(nn.Conv2d(256, 256, 3, padding=1), nn.BatchNorm2d(256)).eval()
    prefix = "roi_head.mask_head.convs.2."
    theirs.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    ours = nn.Sequential(nn.Conv2d(256, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256)).eval()
    ours[0].weight.data.copy_(conversion.state["mask_head.convs.6.weight"])
    for field in ("weight", "bias", "running_mean", "running_var"):
        getattr(ours[1], field).data.copy_(conversion.state[f"mask_head.convs.7.{field}"])
    x = torch.randn(2, 256, 7, 7, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-4)


def test_condinst_first_convolution_takes_rgb():
    state = authors_state("adelaidet_condinst_MS_R_50_1x", seed=5)
    conversion = convert_authors_checkpoint(state)
    w_bgr = state["backbone.bottom_up.stem.conv1.weight"]
    w_rgb = conversion.state["backbone.bottom_up.conv1.weight"]
    image_rgb = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(
        nn.functional.conv2d(image_rgb, w_rgb), nn.functional.conv2d(image_rgb.flip(1), w_bgr)
    )


def _save(tmp_path, state, name="authors.pth", extra=None):
    path = tmp_path / name
    torch.save({"model": state, **(extra or {})}, path)
    return str(path)


def test_model_weights_demands_the_settings_of_adelaidet_weights(tmp_path):
    path = _save(tmp_path, authors_state("adelaidet_condinst_MS_R_50_1x"))
    plain = model_cfg("configs/CondInst_R50_1x.yaml", [])
    model = build_model(plain)
    with pytest.raises(ConfigError) as err:
        load_weights(model, path, "CondInst", cfg=plain)
    message = str(err.value)
    assert "\n" not in message and "AdelaiDet CondInst checkpoint" in message
    assert "MODEL.PIXEL_STD [1,1,1]" in message and "MODEL.RESNETS.STRIDE_IN_1X1 True" in message
    cfg = model_cfg("configs/CondInst_R50_1x.yaml", MSRA)
    report = load_weights(build_model(cfg), path, "CondInst", cfg=cfg)
    assert "AdelaiDet CondInst checkpoint: 370 tensors mapped" in report


def test_idip_weights_on_a_condinst_config_are_refused(tmp_path):
    path = _save(tmp_path, authors_state("idip_authors_res50"), extra={"iteration": 89999})
    cfg = model_cfg("configs/CondInst_R50_1x.yaml", MSRA)
    with pytest.raises(
        ConfigError,
        match="IDIP authors checkpoint, weights of an IDIP model, but "
        "MODEL.META_ARCHITECTURE is CondInst",
    ):
        load_weights(nn.Module(), path, "CondInst", cfg=cfg)  # refused before any loading


def test_unknown_keys_are_named(tmp_path):
    state = authors_state("idip_authors_res50")
    state["roi_head.extra_head.weight"] = torch.zeros(3)
    path = _save(tmp_path, state)
    cfg = model_cfg("configs/IDIP_R50.yaml", [])
    with pytest.raises(
        CheckpointError, match="no conversion rule knows: roi_head.extra_head.weight"
    ):
        load_weights(nn.Module(), path, "IDIP", cfg=cfg)  # refused before any loading


def test_convert_weights_tool_writes_a_checkpoint_that_loads(tmp_path):
    src = _save(tmp_path, authors_state("adelaidet_condinst_MS_R_50_1x"))
    dst = str(tmp_path / "converted.pth")
    tool = [sys.executable, str(ROOT / "tools" / "convert_weights.py"), src, dst]
    proc = subprocess.run(
        tool, capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT))
    )
    assert proc.returncode == 0, proc.stderr
    assert "370 tensors mapped" in proc.stdout and "MODEL.RESNETS.STRIDE_IN_1X1 True" in proc.stdout
    cfg = model_cfg("configs/CondInst_R50_1x.yaml", MSRA)
    assert "loaded CondInst weights" in load_weights(build_model(cfg), dst, "CondInst", cfg=cfg)
    plain = model_cfg("configs/CondInst_R50_1x.yaml", [])
    with pytest.raises(ConfigError, match="MODEL.PIXEL_STD"):
        load_weights(build_model(plain), dst, "CondInst", cfg=plain)
    again = subprocess.run(tool, capture_output=True, text=True, cwd=ROOT)
    assert again.returncode == 2 and again.stderr.startswith("error: ") and "exists" in again.stderr
