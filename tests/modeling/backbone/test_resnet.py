"""ResNet: agreement with torchvision, shapes, widths, stride placement, freezing, argument errors."""

import pytest
import torch
from torch import nn

from idip.modeling.backbone import FrozenBatchNorm2d, ResNet, load_backbone_weights

EXPECTED_SHAPES = {
    18: {"res2": (64, 4), "res3": (128, 8), "res4": (256, 16), "res5": (512, 32)},
    34: {"res2": (64, 4), "res3": (128, 8), "res4": (256, 16), "res5": (512, 32)},
    50: {"res2": (256, 4), "res3": (512, 8), "res4": (1024, 16), "res5": (2048, 32)},
    101: {"res2": (256, 4), "res3": (512, 8), "res4": (1024, 16), "res5": (2048, 32)},
}


def randomize_batchnorm_(model: nn.Module, seed: int) -> None:
    """Gives every BatchNorm non-trivial statistics and affine values (init has mean 0, var 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_output_shape_and_block_counts(depth):
    model = ResNet(depth)
    shapes = model.output_shape()
    assert {k: tuple(v) for k, v in shapes.items()} == EXPECTED_SHAPES[depth]
    assert shapes["res4"].channels == EXPECTED_SHAPES[depth]["res4"][0]
    blocks = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}[depth]
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == blocks


@pytest.mark.parametrize("depth", [18, 50])
def test_forward_shapes_match_output_shape(depth):
    model = ResNet(depth).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        out = model(x)
    assert list(out) == ["res2", "res3", "res4", "res5"]
    for name, (channels, stride) in model.output_shape().items():
        assert out[name].shape == (1, channels, 64 // stride, 96 // stride)


@pytest.mark.parametrize("depth", [18, 50])
@pytest.mark.parametrize("norm", ["FrozenBN", "BN"])
def test_matches_torchvision_after_loading_its_state_dict(depth, norm):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    reference = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    randomize_batchnorm_(reference, seed=depth)
    reference.eval()
    model = ResNet(depth, norm=norm).eval()
    report = load_backbone_weights(model, reference.state_dict())
    assert report.ok, str(report)
    assert report.format == "torchvision"
    assert any(k.startswith("fc.") for k in report.ignored)

    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    trunk = nn.Sequential(
        reference.conv1,
        reference.bn1,
        reference.relu,
        reference.maxpool,
        reference.layer1,
        reference.layer2,
        reference.layer3,
    )
    with torch.no_grad():
        res4 = trunk(x)
        res5 = reference.layer4(res4)
        out = model(x)
    torch.testing.assert_close(out["res4"], res4, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["res5"], res5, rtol=1e-4, atol=1e-4)


def test_stride_placement():
    default = ResNet(50, out_features=("res3",))
    block = default.layer2[0]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)
    assert block.downsample[0].stride == (2, 2)
    caffe = ResNet(50, out_features=("res3",), stride_in_1x1=True)
    block = caffe.layer2[0]
    assert block.conv1.stride == (2, 2) and block.conv2.stride == (1, 1)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert caffe(x)["res3"].shape == default(x)["res3"].shape == (1, 512, 4, 4)


def _trainable_groups(model: ResNet) -> dict[str, bool]:
    groups = {"stem": list(model.conv1.parameters())}
    for i in range(1, 5):
        groups[f"res{i + 1}"] = list(getattr(model, f"layer{i}").parameters())
    return {name: any(p.requires_grad for p in params) for name, params in groups.items()}


@pytest.mark.parametrize("freeze_at", [0, 1, 2, 3, 5])
def test_freeze_at(freeze_at):
    model = ResNet(18, norm="BN", freeze_at=freeze_at)
    expected = {
        "stem": freeze_at < 1,
        "res2": freeze_at < 2,
        "res3": freeze_at < 3,
        "res4": freeze_at < 4,
        "res5": freeze_at < 5,
    }
    assert _trainable_groups(model) == expected
    # Frozen parts carry FrozenBatchNorm2d, trainable parts keep BatchNorm2d.
    assert isinstance(model.bn1, FrozenBatchNorm2d) == (freeze_at >= 1)
    for i in range(1, 5):
        norms = [
            m
            for m in getattr(model, f"layer{i}").modules()
            if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))
        ]
        frozen = [isinstance(m, FrozenBatchNorm2d) for m in norms]
        assert all(frozen) if freeze_at >= i + 1 else not any(frozen)
    for name, param in model.named_parameters():
        if not param.requires_grad:
            assert not name.startswith("layer") or int(name[5]) + 1 <= freeze_at


def test_frozen_stages_keep_statistics_in_training():
    model = ResNet(18, norm="BN", freeze_at=2).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model(torch.randn(2, 3, 32, 32) * 3 + 1)
    after = model.state_dict()
    for key in before:
        if key.startswith(("bn1.", "layer1.")):
            assert torch.equal(before[key], after[key]), key
    assert not torch.equal(before["layer2.0.bn1.running_mean"], after["layer2.0.bn1.running_mean"])


def test_out_features_subset_builds_only_needed_stages():
    model = ResNet(18, out_features=("res3", "res2"))
    assert model.out_features == ("res2", "res3")
    assert not hasattr(model, "layer3") and not hasattr(model, "layer4")
    out = model(torch.randn(1, 3, 32, 32))
    assert list(out) == ["res2", "res3"]


@pytest.mark.parametrize("norm", ["GN", ""])
def test_other_norms_run(norm):
    model = ResNet(18, norm=norm)
    out = model(torch.randn(1, 3, 32, 32))
    assert out["res5"].shape == (1, 512, 1, 1)
    assert (model.conv1.bias is not None) == (norm == "")


@pytest.mark.parametrize(
    "depth, stem, res2, expected",
    [
        (18, 32, 32, (32, 64, 128, 256)),
        (18, 16, 48, (48, 96, 192, 384)),
        (50, 32, 128, (128, 256, 512, 1024)),
    ],
)
def test_thinner_widths(depth, stem, res2, expected):
    model = ResNet(depth, norm="BN", stem_channels=stem, res2_channels=res2)
    assert model.conv1.out_channels == stem and model.bn1.num_features == stem
    assert [c for c, _ in model.output_shape().values()] == list(expected)
    if depth == 50:  # a bottleneck's inner width is a quarter of its output
        assert model.layer1[0].conv2.out_channels == res2 // 4
    out = model(torch.randn(2, 3, 64, 96))
    for name, (channels, stride) in model.output_shape().items():
        assert out[name].shape == (2, channels, 64 // stride, 96 // stride)
    out["res5"].sum().backward()
    assert model.conv1.weight.grad is not None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"depth": 18, "stem_channels": 0}, "stem_channels=0"),
        ({"depth": 50, "res2_channels": 66}, "multiple of 4.*res2_channels=66"),
        ({"depth": 18, "res2_channels": -8}, "res2_channels=-8"),
        ({"depth": 42}, "depth=42"),
        ({"depth": 50, "out_features": ("res6",)}, "'res6'"),
        ({"depth": 50, "out_features": ()}, "out_features"),
        ({"depth": 50, "freeze_at": 6}, "freeze_at=6"),
        ({"depth": 50, "norm": "LN"}, "'LN'"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResNet(**kwargs)


def test_bad_input_shape():
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        ResNet(18)(torch.randn(1, 1, 32, 32))
