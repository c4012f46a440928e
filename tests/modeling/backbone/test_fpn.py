"""FPN: level names, shapes and strides, the top-down sum, P6/P7, init, build_backbone."""

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from idip.config import ConfigError, get_cfg
from idip.modeling.backbone import FPN, ResNet, build_backbone


def _upsample2(x: torch.Tensor) -> torch.Tensor:
    # nearest x2 written independently of F.interpolate
    return x.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return ResNet(18).eval()


@pytest.mark.parametrize("top_block, levels", [(None, [3, 4, 5]), ("P6P7", [3, 4, 5, 6, 7])])
def test_shapes_and_strides(resnet18, top_block, levels):
    fpn = FPN(resnet18, ["res3", "res4", "res5"], out_channels=32, top_block=top_block).eval()
    h, w = 96, 160
    with torch.no_grad():
        out = fpn(torch.randn(1, 3, h, w))
    assert list(out) == [f"p{k}" for k in levels]
    assert {k: tuple(v) for k, v in fpn.output_shape().items()} == {
        f"p{k}": (32, 2**k) for k in levels
    }
    for k in levels:
        assert out[f"p{k}"].shape == (1, 32, math.ceil(h / 2**k), math.ceil(w / 2**k))
    assert fpn.size_divisibility == 32


def test_res2_to_res5_gives_p2_to_p5(resnet18):
    fpn = FPN(resnet18, ["res5", "res2", "res4", "res3"], out_channels=16)
    assert list(fpn.output_shape()) == ["p2", "p3", "p4", "p5"]
    out = fpn(torch.randn(1, 3, 64, 64))
    assert out["p2"].shape == (1, 16, 16, 16)


def test_top_down_pathway_and_p6p7_by_hand(resnet18):
    fpn = FPN(resnet18, ["res3", "res4", "res5"], out_channels=16, top_block="P6P7").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = fpn(x)
        feats = resnet18(x)
        lat5 = fpn.fpn_lateral5(feats["res5"])
        lat4 = fpn.fpn_lateral4(feats["res4"]) + _upsample2(lat5)
        lat3 = fpn.fpn_lateral3(feats["res3"]) + _upsample2(lat4)
        p5 = fpn.fpn_output5(lat5)
        p6 = F.conv2d(p5, fpn.top_block.p6.weight, fpn.top_block.p6.bias, stride=2, padding=1)
        p7 = F.conv2d(
            F.relu(p6), fpn.top_block.p7.weight, fpn.top_block.p7.bias, stride=2, padding=1
        )
    torch.testing.assert_close(out["p5"], p5)
    torch.testing.assert_close(out["p4"], fpn.fpn_output4(lat4))
    torch.testing.assert_close(out["p3"], fpn.fpn_output3(lat3))
    torch.testing.assert_close(out["p6"], p6)
    torch.testing.assert_close(out["p7"], p7)


def test_input_not_divisible_by_32_still_works(resnet18):
    fpn = FPN(resnet18, ["res3", "res4", "res5"], out_channels=16)
    out = fpn(torch.randn(1, 3, 70, 90))
    # stem conv /2 (ceil), maxpool /2 (ceil), then each stage /2 (ceil)
    assert out["p3"].shape[-2:] == (9, 12) and out["p5"].shape[-2:] == (3, 3)


def test_c2_xavier_init():
    fpn = FPN(ResNet(18), ["res4", "res5"], out_channels=256, top_block="P6P7")
    for conv in [fpn.fpn_lateral5, fpn.fpn_output5, fpn.top_block.p6, fpn.top_block.p7]:
        fan_in = conv.weight[0].numel()
        bound = math.sqrt(3.0 / fan_in)  # kaiming_uniform with a=1: sqrt(6 / ((1 + a^2) fan_in))
        assert conv.weight.abs().max() <= bound
        assert conv.weight.abs().max() > 0.95 * bound
        assert torch.count_nonzero(conv.bias) == 0


@pytest.mark.parametrize("norm, norm_type", [("GN", nn.GroupNorm), ("BN", nn.BatchNorm2d)])
def test_norm_on_lateral_and_output(norm, norm_type):
    fpn = FPN(ResNet(18), ["res3", "res4", "res5"], out_channels=64, norm=norm)
    for level in (3, 4, 5):
        for conv in (getattr(fpn, f"fpn_lateral{level}"), getattr(fpn, f"fpn_output{level}")):
            assert isinstance(conv.norm, norm_type) and conv.bias is None
    assert "fpn_lateral3.norm.weight" in fpn.state_dict()
    assert fpn(torch.randn(2, 3, 32, 32))["p3"].shape == (2, 64, 4, 4)


def test_bad_arguments():
    resnet = ResNet(18, out_features=("res3", "res4"))
    with pytest.raises(ValueError, match="'res5'"):
        FPN(resnet, ["res4", "res5"])
    with pytest.raises(ValueError, match="top_block='P6'"):
        FPN(resnet, ["res3", "res4"], top_block="P6")
    with pytest.raises(ValueError, match="norm='SyncBN'"):
        FPN(resnet, ["res3", "res4"], norm="SyncBN")
    with pytest.raises(ValueError, match="twice"):
        FPN(ResNet(18), ["res3", "res5"])


def test_build_backbone_from_config():
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    backbone = build_backbone(cfg)
    assert isinstance(backbone, FPN) and isinstance(backbone.bottom_up, ResNet)
    assert list(backbone.output_shape()) == ["p3", "p4", "p5"]
    assert backbone.bottom_up.freeze_at == cfg.MODEL.BACKBONE.FREEZE_AT == 2
    assert not any(p.requires_grad for p in backbone.bottom_up.layer1.parameters())

    cfg.MODEL.FPN.TOP_BLOCK = "P6P7"
    cfg.MODEL.FPN.NORM = "GN"
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = True
    backbone = build_backbone(cfg)
    assert list(backbone.output_shape()) == ["p3", "p4", "p5", "p6", "p7"]
    assert backbone.bottom_up.stride_in_1x1


def test_build_backbone_widths_from_config():
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 24
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 32
    cfg.MODEL.FPN.OUT_CHANNELS = 16
    backbone = build_backbone(cfg)
    assert backbone.bottom_up.conv1.out_channels == 24
    assert [c for c, _ in backbone.bottom_up.output_shape().values()] == [64, 128, 256]
    out = backbone(torch.randn(1, 3, 64, 64))
    assert [tuple(v.shape) for v in out.values()] == [(1, 16, 8, 8), (1, 16, 4, 4), (1, 16, 2, 2)]


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("MODEL.FPN.IN_FEATURES", ["res2", "res3"], "MODEL.FPN.IN_FEATURES"),
        ("MODEL.RESNETS.DEPTH", 42, "MODEL.RESNETS.DEPTH"),
        ("MODEL.FPN.TOP_BLOCK", "P6", "MODEL.FPN.TOP_BLOCK"),
        ("MODEL.RESNETS.WIDTH_PER_GROUP", 4, "MODEL.RESNETS.WIDTH_PER_GROUP"),
        ("MODEL.RESNETS.STEM_OUT_CHANNELS", 0, "MODEL.RESNETS.STEM_OUT_CHANNELS"),
        ("MODEL.RESNETS.RES2_OUT_CHANNELS", 102, "MODEL.RESNETS.RES2_OUT_CHANNELS.*multiple of 4"),
        ("MODEL.BACKBONE.NAME", "Swin", "MODEL.BACKBONE.NAME"),
    ],
)
def test_build_backbone_config_errors(key, value, match):
    cfg = get_cfg()
    node = cfg
    *path, last = key.split(".")
    for part in path:
        node = getattr(node, part)
    setattr(node, last, value)
    with pytest.raises(ConfigError, match=match):
        build_backbone(cfg)
