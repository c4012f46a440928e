"""load_backbone_weights: torchvision, detectron2 and Caffe2 names; safety of .pkl loading."""

import logging
import os
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from idip.modeling.backbone import FPN, CheckpointError, ResNet, load_backbone_weights
from idip.modeling.backbone.weights import (
    CAFFE_PIXEL_STD,
    MSRA_SETTINGS,
    TORCHVISION_PIXEL_STD,
    looks_like_backbone_weights,
    pretrained_weights_hint,
)

EPS = 1e-5


def torchvision_resnet18_shapes() -> dict[str, tuple[int, ...]]:
    """torchvision resnet18 state-dict names and shapes, written out from its architecture."""
    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7)}

    def bn(prefix, c):
        for field in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{field}"] = (c,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    bn("bn1", 64)
    previous = 64
    for stage, channels in zip((1, 2, 3, 4), (64, 128, 256, 512)):
        for block in (0, 1):
            p = f"layer{stage}.{block}"
            in_ch = previous if block == 0 else channels
            shapes[f"{p}.conv1.weight"] = (channels, in_ch, 3, 3)
            bn(f"{p}.bn1", channels)
            shapes[f"{p}.conv2.weight"] = (channels, channels, 3, 3)
            bn(f"{p}.bn2", channels)
            if block == 0 and stage > 1:
                shapes[f"{p}.downsample.0.weight"] = (channels, previous, 1, 1)
                bn(f"{p}.downsample.1", channels)
        previous = channels
    shapes["fc.weight"] = (1000, 512)
    shapes["fc.bias"] = (1000,)
    return shapes


def random_state_dict(shapes, seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        if name.endswith("num_batches_tracked"):
            out[name] = torch.tensor(7)
        elif name.endswith("running_var"):
            out[name] = torch.rand(shape, generator=g) + 0.5
        elif name.endswith("weight") and len(shape) == 1:
            out[name] = torch.rand(shape, generator=g) * 0.5 + 0.5
        else:
            out[name] = torch.randn(shape, generator=g) * 0.1
    return out


SMALL = ("res2", "res3")  # bottleneck stages enough to cover every block kind, in less time


def source_model(
    depth=18, stride_in_1x1=False, seed=0, out_features=("res2", "res3", "res4", "res5")
) -> ResNet:
    """A ResNet with random weights and non-trivial BN statistics, in eval mode."""
    torch.manual_seed(seed)
    model = ResNet(depth, out_features=out_features, norm="BN", stride_in_1x1=stride_in_1x1)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.0, generator=g)
                m.bias.normal_(0, 0.1, generator=g)
                m.running_mean.normal_(0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
    return model.eval()


def torchvision_to_detectron2(name: str) -> str:
    """Independent renaming, as detectron2's convert-torchvision-to-d2 does."""
    parts = name.split(".")
    if parts[0] == "conv1":
        return "stem.conv1." + parts[1]
    if parts[0] == "bn1":
        return "stem.conv1.norm." + parts[1]
    if parts[0] == "fc":
        return "stem.fc." + parts[1]
    stage = "res" + str(int(parts[0][len("layer") :]) + 1)
    block, layer, rest = parts[1], parts[2], parts[3:]
    if layer == "downsample":
        layer, rest = ("shortcut", rest[1:]) if rest[0] == "0" else ("shortcut.norm", rest[1:])
    elif layer.startswith("bn"):
        layer = "conv" + layer[2:] + ".norm"
    return ".".join([stage, block, layer] + rest)


def torchvision_to_caffe2(name: str) -> str:
    """Independent renaming to the MSRA Caffe2 blob names."""
    field = {"weight": "s", "bias": "b"}
    parts = name.split(".")
    if parts[0] == "conv1":
        return "conv1_w"
    if parts[0] == "bn1":
        return "res_conv1_bn_" + field[parts[1]]
    stage = int(parts[0][len("layer") :]) + 1
    block = parts[1]
    if parts[2] == "downsample":
        branch = "1"
        is_bn = parts[3] == "1"
    else:
        branch = "2" + "abc"[int(parts[2][-1]) - 1]
        is_bn = parts[2].startswith("bn")
    suffix = "bn_" + field[parts[-1]] if is_bn else "w"
    return f"res{stage}_{block}_branch{branch}_{suffix}"


def save_pkl(path, obj, protocol=pickle.HIGHEST_PROTOCOL):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return str(path)


def outputs(model, seed=3):
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(x)


# ------------------------------------------------------------------------------------------------


def test_torchvision_key_fixture_without_torchvision():
    shapes = torchvision_resnet18_shapes()
    state = random_state_dict(shapes)
    model = ResNet(18)
    report = load_backbone_weights(model, state)
    assert report.ok and report.format == "torchvision"
    # 20 convs + 20 norms x 4 tensors; fc (2) and the 20 step counters are ignored.
    assert len(report.loaded) == 100 and len(report.ignored) == 22
    loaded = model.state_dict()
    for name in ("conv1.weight", "layer3.0.downsample.0.weight", "layer4.1.bn2.running_var"):
        torch.testing.assert_close(loaded[name], state[name], rtol=0, atol=0)
    assert str(report).count("\n") == 0 and "loaded 100 tensors" in str(report)


def test_torchvision_pth_file_and_whole_model_targets(tmp_path):
    source = source_model(18)
    path = tmp_path / "resnet18.pth"
    state = {k: v for k, v in source.state_dict().items()}
    state["fc.weight"] = torch.zeros(1000, 512)
    torch.save(state, path)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = FPN(ResNet(18), ["res3", "res4", "res5"], out_channels=16)
            self.head = nn.Linear(4, 4)

    model = Model().eval()
    report = load_backbone_weights(model, path)
    assert report.ok, str(report)
    assert all(k.startswith("backbone.bottom_up.") for k in report.loaded)
    assert str(path) in report.source
    torch.testing.assert_close(outputs(model.backbone.bottom_up)["res5"], outputs(source)["res5"])

    fpn = FPN(ResNet(18), ["res4", "res5"], out_channels=16)
    report = load_backbone_weights(fpn, state)
    assert report.ok and report.loaded[0].startswith("bottom_up.")


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_detectron2_pkl_from_torchvision_names(tmp_path, protocol):
    source = source_model(18, seed=5)
    d2 = {
        torchvision_to_detectron2(k): v.numpy()
        for k, v in source.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    assert "res2.0.conv1.norm.running_var" in d2 and "res3.0.shortcut.norm.weight" in d2
    path = save_pkl(
        tmp_path / "R-18.pkl",
        {"model": d2, "__author__": "torchvision", "matching_heuristics": True},
        protocol,
    )
    model = ResNet(18).eval()
    report = load_backbone_weights(model, path)
    assert report.ok and report.format == "detectron2", str(report)
    assert len(report.loaded) == 100
    for name, value in outputs(source).items():
        torch.testing.assert_close(outputs(model)[name], value)


def test_detectron2_full_model_checkpoint_loads_resnet_and_fpn(tmp_path):
    torch.manual_seed(11)
    source = FPN(
        source_model(18, seed=11), ["res3", "res4", "res5"], out_channels=32, top_block="P6P7"
    ).eval()
    d2 = {}
    for key, value in source.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        if key.startswith("bottom_up."):
            key = "bottom_up." + torchvision_to_detectron2(key[len("bottom_up.") :])
        d2["backbone." + key] = value.numpy()
    assert "backbone.fpn_lateral3.weight" in d2 and "backbone.top_block.p7.bias" in d2
    d2["roi_heads.box_predictor.cls_score.weight"] = np.zeros((81, 1024), np.float32)
    path = save_pkl(
        tmp_path / "model_final.pkl", {"model": d2, "__author__": "Detectron2 Model Zoo"}
    )

    class Detector(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = FPN(
                ResNet(18), ["res3", "res4", "res5"], out_channels=32, top_block="P6P7"
            )

    model = Detector().eval()
    report = load_backbone_weights(model, path)
    assert report.unexpected == ["roi_heads.box_predictor.cls_score.weight"]
    assert not report.missing and not report.mismatched
    assert "backbone.fpn_output5.weight" in report.loaded
    expected = outputs(source)
    for name, value in outputs(model.backbone).items():
        torch.testing.assert_close(value, expected[name])


def _caffe2_blobs(source: ResNet) -> dict[str, np.ndarray]:
    """MSRA-style blobs: BN folded into scale/shift, stem conv taking BGR input."""
    state = source.state_dict()
    blobs = {}
    for key, value in state.items():
        if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue
        norm_prefix = key.rsplit(".", 1)[0]
        if f"{norm_prefix}.running_var" in state:
            variance = state[f"{norm_prefix}.running_var"]
            scale = state[f"{norm_prefix}.weight"] / torch.sqrt(variance + EPS)
            if key.endswith("weight"):
                value = scale
            else:
                value = value - state[f"{norm_prefix}.running_mean"] * scale
        if key == "conv1.weight":
            value = value[:, [2, 1, 0]]
        blobs[torchvision_to_caffe2(key)] = value.numpy().astype(np.float32)
    blobs["fc1000_w"] = np.zeros((1000, 2048), np.float32)
    blobs["fc1000_b"] = np.zeros((1000,), np.float32)
    blobs["res2_0_branch2a_bn_s_momentum"] = np.zeros(1, np.float32)
    return blobs


def test_caffe2_msra_r50_needs_stride_in_1x1_and_matches(tmp_path):
    source = source_model(50, stride_in_1x1=True, seed=21, out_features=SMALL)
    blobs = _caffe2_blobs(source)
    assert "res3_3_branch2c_bn_b" in blobs and "res2_0_branch1_w" in blobs
    path = save_pkl(tmp_path / "R-50.pkl", blobs, protocol=2)

    needs_stride = (
        r"R-50\.pkl' holds MSRA/Caffe2-style.*: set MODEL\.RESNETS\.STRIDE_IN_1X1 True \("
    )
    with pytest.raises(CheckpointError, match=needs_stride):
        load_backbone_weights(ResNet(50, out_features=SMALL), path)

    model = ResNet(50, out_features=SMALL, stride_in_1x1=True).eval()
    report = load_backbone_weights(model, path)
    assert report.ok and report.format == "caffe2", str(report)
    assert any("BGR" in note for note in report.notes)
    assert any("PIXEL_STD" in note for note in report.notes)
    expected = outputs(source)
    got = outputs(model)
    for name in SMALL:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-4)


def test_detectron2_msra_author_or_missing_stats_is_caffe_style():
    source = source_model(50, stride_in_1x1=True, seed=2, out_features=SMALL)
    blobs = _caffe2_blobs(source)
    # Same blobs under detectron2 names (folded norms, so no running stats at all).
    names = {}
    for key in source.state_dict():
        if not key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            names[torchvision_to_caffe2(key)] = torchvision_to_detectron2(key)
    d2 = {names[k]: v for k, v in blobs.items() if k in names}
    with pytest.raises(CheckpointError, match="MSRA/Caffe2.*STRIDE_IN_1X1 True"):
        load_backbone_weights(
            ResNet(50, out_features=SMALL), {"model": d2, "__author__": "unknown"}
        )
    model = ResNet(50, out_features=SMALL, stride_in_1x1=True).eval()
    report = load_backbone_weights(model, {"model": d2, "__author__": "MSRA"})
    assert report.ok, str(report)
    torch.testing.assert_close(
        outputs(model)["res3"], outputs(source)["res3"], rtol=1e-4, atol=1e-4
    )


def test_torchvision_style_weights_and_stride_in_1x1_model():
    source = source_model(50, out_features=SMALL)
    d2 = {
        torchvision_to_detectron2(k): v.numpy()
        for k, v in source.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    caffe_model = ResNet(50, out_features=SMALL, stride_in_1x1=True)
    with pytest.raises(CheckpointError, match="torchvision-style.*STRIDE_IN_1X1 False"):
        load_backbone_weights(caffe_model, {"model": d2, "__author__": "torchvision"})
    # torchvision names are also this package's own names, so they only warn
    report = load_backbone_weights(caffe_model, source.state_dict())
    assert report.ok and any("stride_in_1x1=True" in note for note in report.notes)


def test_mismatched_missing_and_unexpected_are_reported(caplog):
    state = random_state_dict(torchvision_resnet18_shapes())
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    del state["layer4.1.bn2.running_var"]
    state["layer5.0.conv1.weight"] = torch.zeros(3)
    model = ResNet(18)
    before = model.layer1[0].conv1.weight.clone()
    with caplog.at_level(logging.INFO, logger="idip.modeling.backbone.weights"):
        report = load_backbone_weights(model, state)
    assert report.mismatched == [("layer1.0.conv1.weight", (64, 64, 1, 1), (64, 64, 3, 3))]
    assert torch.equal(model.layer1[0].conv1.weight, before)
    assert report.missing == ["layer1.0.conv1.weight", "layer4.1.bn2.running_var"]
    assert report.unexpected == ["layer5.0.conv1.weight"]
    assert not report.ok
    assert str(report) in caplog.text
    assert "1 shape-mismatched" in str(report) and "2 missing" in str(report)


def test_depth_mismatch_is_reported_not_loaded():
    state = source_model(18).state_dict()
    report = load_backbone_weights(ResNet(34), state)
    assert report.missing  # blocks layer1.2 etc. do not exist in R18
    assert not report.mismatched and not report.unexpected


def test_unrecognised_checkpoint():
    with pytest.raises(CheckpointError, match="no ResNet weights recognised"):
        load_backbone_weights(ResNet(18), {"encoder.weight": torch.zeros(3)})


class _RunsCommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    payload = {"model": {"conv1.weight": _RunsCommand(f"touch {marker}")}}
    path = save_pkl(tmp_path / "evil.pkl", payload)
    refused = r"evil\.pkl.*refusing to load the global '(posix|os|nt)\.system'"
    with pytest.raises(CheckpointError, match=refused):
        load_backbone_weights(ResNet(18), path)
    assert not marker.exists()

    path = save_pkl(tmp_path / "eval.pkl", {"model": {"x": eval}})
    with pytest.raises(CheckpointError, match="builtins.eval"):
        load_backbone_weights(ResNet(18), path)


def test_malicious_pth_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": _RunsCommand(f"touch {marker}")}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pth.*weights_only=True"):
        load_backbone_weights(ResNet(18), path)
    assert not marker.exists()


def test_missing_and_corrupt_files(tmp_path):
    missing = tmp_path / "nope.pkl"
    with pytest.raises(CheckpointError, match="not found: .*nope.pkl"):
        load_backbone_weights(ResNet(18), missing)
    corrupt = tmp_path / "corrupt.pkl"
    corrupt.write_bytes(b"this is not a pickle")
    with pytest.raises(CheckpointError, match="corrupt.pkl"):
        load_backbone_weights(ResNet(18), corrupt)
    truncated = tmp_path / "truncated.pth"
    torch.save(random_state_dict(torchvision_resnet18_shapes()), truncated)
    truncated.write_bytes(truncated.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated.pth"):
        load_backbone_weights(ResNet(18), truncated)


def test_module_without_resnet():
    with pytest.raises(CheckpointError, match="no ResNet"):
        load_backbone_weights(nn.Linear(2, 2), {"conv1.weight": torch.zeros(1)})


def test_caffe2_groupnorm_blobs_load_without_a_stride_verdict():
    torch.manual_seed(4)
    source = ResNet(50, out_features=SMALL, norm="GN").eval()
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for m in source.modules():
            if isinstance(m, nn.GroupNorm):
                m.weight.uniform_(0.5, 1.0, generator=g)
                m.bias.normal_(0, 0.1, generator=g)
    blobs = {}
    for key, value in source.state_dict().items():
        if key == "conv1.weight":
            value = value[:, [2, 1, 0]]  # stored for BGR input
        blobs[torchvision_to_caffe2(key).replace("_bn_", "_gn_")] = value.numpy()
    assert "res2_0_branch2a_gn_s" in blobs
    model = ResNet(50, out_features=SMALL, norm="GN").eval()
    report = load_backbone_weights(model, blobs)
    assert report.ok and report.format == "caffe2", str(report)
    torch.testing.assert_close(outputs(model)["res3"], outputs(source)["res3"])


# ------------------------------------------------------------------------------------------------
# The settings each kind of ImageNet weights needs, and where to get them (#23 item 4)
# ------------------------------------------------------------------------------------------------


def _msra_r50_pkl(tmp_path) -> tuple[ResNet, str]:
    source = source_model(50, stride_in_1x1=True, seed=21, out_features=SMALL)
    return source, save_pkl(tmp_path / "R-50.pkl", _caffe2_blobs(source), protocol=2)


def test_msra_weights_demand_stride_in_1x1_and_pixel_std_in_one_line(tmp_path):
    _, path = _msra_r50_pkl(tmp_path)
    with pytest.raises(CheckpointError) as err:
        load_backbone_weights(ResNet(50, out_features=SMALL), path, pixel_std=TORCHVISION_PIXEL_STD)
    message = str(err.value)
    assert "\n" not in message and f"'{path}' holds MSRA/Caffe2-style weights" in message
    assert "caffe2 names" in message
    assert "stride_in_1x1=False and MODEL.PIXEL_STD is [58.395, 57.12, 57.375]" in message
    assert message.endswith(f": set {MSRA_SETTINGS} (command line or config)")
    assert 'MODEL.RESNETS.STRIDE_IN_1X1 True MODEL.PIXEL_STD "[1.0, 1.0, 1.0]"' in message

    # the stride right, the std not: only the std is asked for
    with pytest.raises(CheckpointError) as err:
        load_backbone_weights(
            ResNet(50, out_features=SMALL, stride_in_1x1=True),
            path,
            pixel_std=TORCHVISION_PIXEL_STD,
        )
    assert str(err.value).endswith(
        ': set MODEL.PIXEL_STD "[1.0, 1.0, 1.0]" (command line or config)'
    )


def test_msra_weights_with_the_right_settings_load_without_a_pixel_std_note(tmp_path, caplog):
    source, path = _msra_r50_pkl(tmp_path)
    model = ResNet(50, out_features=SMALL, stride_in_1x1=True).eval()
    with caplog.at_level(logging.INFO, logger="idip.modeling.backbone.weights"):
        report = load_backbone_weights(model, path, pixel_std=[1, 1, 1.0])
    assert report.ok and report.format == "caffe2", str(report)
    assert not any("PIXEL_STD" in note for note in report.notes)
    assert "PIXEL_STD" not in caplog.text and "BGR" in caplog.text
    torch.testing.assert_close(
        outputs(model)["res3"], outputs(source)["res3"], rtol=1e-4, atol=1e-4
    )


def test_caffe2_groupnorm_weights_also_need_pixel_std_1():
    source = ResNet(50, out_features=SMALL, norm="GN")
    blobs = {
        torchvision_to_caffe2(k).replace("_bn_", "_gn_"): v.numpy()
        for k, v in source.state_dict().items()
    }
    model = ResNet(50, out_features=SMALL, norm="GN")
    with pytest.raises(CheckpointError, match=r'Caffe2 weights .*set MODEL\.PIXEL_STD "\[1\.0'):
        load_backbone_weights(model, blobs, pixel_std=TORCHVISION_PIXEL_STD)
    assert load_backbone_weights(model, blobs, pixel_std=CAFFE_PIXEL_STD).ok


def _torchvision_classifier(depth: int) -> dict[str, torch.Tensor]:
    """A torchvision classification checkpoint: our names plus torchvision's ``fc``."""
    if depth == 18:
        return random_state_dict(torchvision_resnet18_shapes())
    state = dict(source_model(depth, out_features=SMALL).state_dict())
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    return state


def test_torchvision_classifier_weights_demand_stride_in_3x3_and_their_std():
    state = _torchvision_classifier(50)
    caffe_model = ResNet(50, out_features=SMALL, stride_in_1x1=True)
    with pytest.raises(CheckpointError) as err:
        load_backbone_weights(caffe_model, state, pixel_std=CAFFE_PIXEL_STD)
    message = str(err.value)
    assert message.startswith("<state_dict> holds torchvision-style weights")
    assert "torchvision names" in message
    assert message.endswith(
        ': set MODEL.RESNETS.STRIDE_IN_1X1 False MODEL.PIXEL_STD "[58.395, 57.12, 57.375]" '
        "(command line or config)"
    )
    # without a stride (basic blocks), the std is still checked
    with pytest.raises(CheckpointError, match=r'set MODEL\.PIXEL_STD "\[58\.395'):
        load_backbone_weights(ResNet(18), _torchvision_classifier(18), pixel_std=[1.0, 1.0, 1.0])
    report = load_backbone_weights(
        ResNet(50, out_features=SMALL), state, pixel_std=TORCHVISION_PIXEL_STD
    )
    assert report.ok and not report.notes, str(report)


def test_own_resnet_state_dict_is_not_taken_for_torchvision_weights():
    # no fc: possibly this package's own caffe-style ResNet, so settings are not demanded
    state = source_model(50, stride_in_1x1=True, out_features=SMALL).state_dict()
    model = ResNet(50, out_features=SMALL, stride_in_1x1=True)
    report = load_backbone_weights(model, state, pixel_std=CAFFE_PIXEL_STD)
    assert report.ok and any(note.startswith("WARNING") for note in report.notes)


@pytest.mark.parametrize(
    "path, expected",
    [
        ("pretrained/R-50.pth", True),
        ("pretrained/anything.pth", True),
        ("/data/models/R-101.pkl", True),
        ("resnet50-0676ba61.pth", True),
        ("MSRA_R-50.pkl", True),
        ("output/model_final.pth", False),
        ("output/run_r500/model_final.pth", False),
        ("pretrained_models/model.pth", False),
    ],
)
def test_which_paths_look_like_backbone_weights(path, expected):
    assert looks_like_backbone_weights(path) is expected


def test_pretrained_weights_hint_names_the_files_settings_and_a_download_command():
    hint = pretrained_weights_hint("pretrained/R-50.pth", 50)
    assert "\n" not in hint
    for part in (
        "ResNet50_Weights.IMAGENET1K_V1 https://download.pytorch.org/models/resnet50-0676ba61.pth",
        "IMAGENET1K_V2 https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
        'MODEL.RESNETS.STRIDE_IN_1X1 False MODEL.PIXEL_STD "[58.395, 57.12, 57.375]"',
        "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/MSRA/R-50.pkl",
        f"with {MSRA_SETTINGS}",
        "mkdir -p pretrained && curl -L -o pretrained/R-50.pth "
        "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    ):
        assert part in hint, (part, hint)

    hint = pretrained_weights_hint("pretrained/R-101.pkl")  # depth from the name
    assert "resnet101-63fe2227.pth" in hint and "resnet101-cd907fc2.pth" in hint
    assert (
        "curl -L -o pretrained/R-101.pkl "
        "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/MSRA/R-101.pkl, "
        f"then add {MSRA_SETTINGS}" in hint
    )
    hint = pretrained_weights_hint("weights/R-18.pkl")  # no MSRA R-18: a .pth next to it
    assert "MSRA" not in hint and "resnet18-f37072fd.pth" in hint
    assert "then set MODEL.WEIGHTS weights/R-18.pth" in hint
    assert pretrained_weights_hint("output/model_final.pth", 50) == ""
