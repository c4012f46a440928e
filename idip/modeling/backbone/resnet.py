"""ResNet-18/34/50/101/152 in torchvision's layout, returning the stages res2..res5 by name."""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .norm import FrozenBatchNorm2d, get_norm

# depth -> (block type, number of blocks in res2..res5)
RESNET_SPECS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
STAGE_NAMES = ("res2", "res3", "res4", "res5")
STEM_CHANNELS = 64


class ShapeSpec(NamedTuple):
    """Channels and stride (w.r.t. the input image) of one feature map."""

    channels: int
    stride: int


def _norm_or_identity(norm: str, channels: int) -> nn.Module:
    layer = get_norm(norm, channels)
    return nn.Identity() if layer is None else layer


class BasicBlock(nn.Module):
    """Two 3x3 convs (stride on the first) plus the identity or a 1x1 projection shortcut.

    Shape: [N, in_channels, H, W] -> [N, out_channels, H/stride, W/stride].
    """

    expansion = 1

    def __init__(
        self, in_channels: int, width: int, stride: int, norm: str, stride_in_1x1: bool = False
    ):
        super().__init__()
        del stride_in_1x1  # a basic block has no 1x1 conv; kept for a uniform constructor
        out_channels = width * self.expansion
        bias = norm == ""
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride, 1, bias=bias)
        self.bn1 = _norm_or_identity(norm, width)
        self.conv2 = nn.Conv2d(width, out_channels, 3, 1, 1, bias=bias)
        self.bn2 = _norm_or_identity(norm, out_channels)
        self.downsample = _projection(in_channels, out_channels, stride, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) plus the identity or a 1x1 projection shortcut.

    The stride sits on the 3x3 conv (torchvision, "ResNet v1.5"), or on the first 1x1 conv when
    ``stride_in_1x1`` (the original MSRA/Caffe2 models).

    Shape: [N, in_channels, H, W] -> [N, 4*width, H/stride, W/stride].
    """

    expansion = 4

    def __init__(
        self, in_channels: int, width: int, stride: int, norm: str, stride_in_1x1: bool = False
    ):
        super().__init__()
        out_channels = width * self.expansion
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        bias = norm == ""
        self.conv1 = nn.Conv2d(in_channels, width, 1, stride_1x1, 0, bias=bias)
        self.bn1 = _norm_or_identity(norm, width)
        self.conv2 = nn.Conv2d(width, width, 3, stride_3x3, 1, bias=bias)
        self.bn2 = _norm_or_identity(norm, width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, 1, 0, bias=bias)
        self.bn3 = _norm_or_identity(norm, out_channels)
        self.downsample = _projection(in_channels, out_channels, stride, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


def _projection(in_channels: int, out_channels: int, stride: int, norm: str) -> nn.Module | None:
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride, 0, bias=norm == ""),
        _norm_or_identity(norm, out_channels),
    )


def block_expansion(depth: int) -> int:
    """Output channels of a depth's residual block per unit of its inner width (1 basic, 4 bottleneck)."""
    return (BasicBlock if RESNET_SPECS[depth][0] == "basic" else Bottleneck).expansion


class ResNet(nn.Module):
    """ResNet backbone (torchvision module names) that returns the requested stages by name.

    Module names are torchvision's (``conv1``, ``bn1``, ``layer1``..``layer4``, blocks with
    ``conv1/bn1/...`` and ``downsample.0/1``), so a torchvision state dict loads without renaming;
    ``load_backbone_weights`` also maps detectron2 and Caffe2 names. ``layer{k}`` is the stage
    called ``res{k+1}``. Stages deeper than the deepest requested output are not built.

    Args:
        depth: 18, 34, 50, 101 or 152.
        out_features: stages to return, from "res2" (stride 4), "res3" (8), "res4" (16),
            "res5" (32).
        norm: normalisation after every conv: "FrozenBN", "BN", "SyncBN", "GN" or "" (none; the
            convs then have biases).
        freeze_at: 0 trains everything; 1 freezes the stem; k >= 2 freezes the stem and res2 ..
            res{k}. Frozen parameters get ``requires_grad=False`` and their batch norms become
            FrozenBatchNorm2d.
        stride_in_1x1: bottleneck stride on the first 1x1 conv (MSRA/Caffe2 weights) instead of
            the 3x3 conv; no effect on depth 18/34.
        stem_channels: output channels of the 7x7 stem conv (64 in the standard networks).
        res2_channels: output channels of res2; each later stage doubles them. None gives the
            standard 64 (depth 18/34) or 256 (bottleneck networks, whose inner width is a quarter).
            A thinner network trains from scratch faster on small data; pretrained weights only
            fit the standard widths.

    Shape:
        input [N, 3, H, W] -> dict name -> [N, C_name, ceil(H/stride), ceil(W/stride)].
    """

    def __init__(
        self,
        depth: int,
        out_features: Sequence[str] = STAGE_NAMES,
        norm: str = "FrozenBN",
        freeze_at: int = 0,
        stride_in_1x1: bool = False,
        stem_channels: int = STEM_CHANNELS,
        res2_channels: int | None = None,
    ):
        super().__init__()
        if depth not in RESNET_SPECS:
            raise ValueError(
                f"ResNet depth must be one of {sorted(RESNET_SPECS)}; got depth={depth}"
            )
        out_features = tuple(out_features)
        if not out_features:
            raise ValueError(f"ResNet out_features is empty; name at least one of {STAGE_NAMES}")
        for name in out_features:
            if name not in STAGE_NAMES:
                raise ValueError(
                    f"ResNet out_features has unknown stage {name!r}; expected names from "
                    f"{STAGE_NAMES}"
                )
        if not 0 <= freeze_at <= 5:
            raise ValueError(f"ResNet freeze_at must be in 0..5; got freeze_at={freeze_at}")
        get_norm(norm, STEM_CHANNELS)  # validates the name early, with its own error message

        block_kind, blocks_per_stage = RESNET_SPECS[depth]
        block_cls = BasicBlock if block_kind == "basic" else Bottleneck
        if res2_channels is None:
            res2_channels = 64 * block_cls.expansion
        if stem_channels <= 0:
            raise ValueError(
                f"ResNet stem_channels must be positive; got stem_channels={stem_channels}"
            )
        if res2_channels <= 0 or res2_channels % block_cls.expansion:
            raise ValueError(
                f"ResNet-{depth} res2_channels must be a positive multiple of {block_cls.expansion}; "
                f"got res2_channels={res2_channels}"
            )
        self.depth = depth
        self.norm = norm
        self.freeze_at = freeze_at
        self.stride_in_1x1 = stride_in_1x1
        self.out_features = tuple(sorted(out_features, key=STAGE_NAMES.index))
        num_stages = max(STAGE_NAMES.index(name) for name in out_features) + 1

        self.conv1 = nn.Conv2d(3, stem_channels, 7, 2, 3, bias=norm == "")
        self.bn1 = _norm_or_identity(norm, stem_channels)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        self._shapes: dict[str, ShapeSpec] = {}
        in_channels, stride = stem_channels, 4
        for index in range(num_stages):
            width = res2_channels // block_cls.expansion * 2**index
            first_stride = 1 if index == 0 else 2
            stride *= first_stride
            blocks = []
            for block_index in range(blocks_per_stage[index]):
                blocks.append(
                    block_cls(
                        in_channels,
                        width,
                        first_stride if block_index == 0 else 1,
                        norm,
                        stride_in_1x1,
                    )
                )
                in_channels = width * block_cls.expansion
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
            self._shapes[STAGE_NAMES[index]] = ShapeSpec(in_channels, stride)

        self._init_weights()
        self._freeze(freeze_at)

    @property
    def stages(self) -> list[nn.Sequential]:
        """The built stages, res2 first."""
        return [getattr(self, f"layer{i + 1}") for i in range(len(self._shapes))]

    def _init_weights(self) -> None:
        # torchvision's initialisation, so an un-pretrained backbone trains as torchvision's does.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _freeze(self, freeze_at: int) -> None:
        if freeze_at >= 1:
            for module in (self.conv1, self.bn1):
                for param in module.parameters():
                    param.requires_grad_(False)
            self.bn1 = FrozenBatchNorm2d.convert_frozen_batchnorm(self.bn1)
        for index, stage in enumerate(self.stages, start=2):
            if freeze_at >= index:
                for param in stage.parameters():
                    param.requires_grad_(False)
                FrozenBatchNorm2d.convert_frozen_batchnorm(stage)

    def output_shape(self) -> dict[str, ShapeSpec]:
        """name -> (channels, stride) of every returned feature."""
        return {name: self._shapes[name] for name in self.out_features}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Args: x [N, 3, H, W] normalised images. Returns name -> [N, C, H/stride, W/stride]."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"ResNet expects images of shape [N, 3, H, W]; got {list(x.shape)}")
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        outputs = {}
        for name, stage in zip(STAGE_NAMES, self.stages):
            x = stage(x)
            if name in self.out_features:
                outputs[name] = x
        return outputs
