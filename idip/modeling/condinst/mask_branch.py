"""CondInst's mask branch: shared mask features at the stride of its first input level."""

from __future__ import annotations

from torch import Tensor, nn

from ...config import ConfigError
from ..op_library import op_library


def _conv_norm_relu(in_channels: int, out_channels: int, norm: str) -> nn.Sequential:
    if norm not in ("BN", "GN", "", "none"):
        raise ConfigError(
            f"config key 'MODEL.CONDINST.MASK_BRANCH.NORM' must be 'BN', 'GN' or '', got {norm!r}"
        )
    use_norm = norm in ("BN", "GN")
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=not use_norm)
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.constant_(conv.bias, 0.0)
    layers: list[nn.Module] = [conv]
    if norm == "BN":
        layers.append(nn.BatchNorm2d(out_channels))
    elif norm == "GN":
        layers.append(nn.GroupNorm(32, out_channels))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class MaskBranch(nn.Module):
    """p3, p4, p5 -> [conv3x3 -> ``channels`` + norm + ReLU] each, aligned-upsampled to p3's size
    and summed -> ``num_convs`` x [conv3x3 + norm + ReLU] -> 1x1 conv to ``out_channels``.

    Attributes:
        out_stride: stride of the output (that of the first input feature, 8 for p3).
    """

    def __init__(
        self,
        input_shape: dict[str, tuple[int, int]],
        in_features: list[str],
        channels: int = 128,
        num_convs: int = 4,
        out_channels: int = 8,
        norm: str = "BN",
        use_reference_ops: bool = False,
    ):
        super().__init__()
        for name in in_features:
            if name not in input_shape:
                raise ConfigError(
                    f"config key 'MODEL.CONDINST.MASK_BRANCH.IN_FEATURES' names {name!r}, which the "
                    f"backbone does not produce (it gives {sorted(input_shape)})"
                )
        self.in_features = list(in_features)
        self.out_stride = int(input_shape[in_features[0]][1])
        self.use_reference_ops = bool(use_reference_ops)
        self.refine = nn.ModuleList(
            [_conv_norm_relu(input_shape[f][0], channels, norm) for f in self.in_features]
        )
        tower: list[nn.Module] = [
            _conv_norm_relu(channels, channels, norm) for _ in range(num_convs)
        ]
        tower.append(nn.Conv2d(channels, out_channels, kernel_size=1))
        self.tower = nn.Sequential(*tower)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        """FPN features -> mask features [B, out_channels, H/out_stride, W/out_stride]."""
        x = self.refine[0](features[self.in_features[0]])
        for refine, name in zip(self.refine[1:], self.in_features[1:]):
            y = refine(features[name])
            factor = x.shape[-2] // y.shape[-2]
            if y.shape[-2] * factor != x.shape[-2] or y.shape[-1] * factor != x.shape[-1]:
                raise ValueError(
                    f"mask branch: feature {name!r} of size {tuple(y.shape[-2:])} does not upsample "
                    f"exactly to {tuple(x.shape[-2:])}; pad the input to a multiple of 32"
                )
            x = x + op_library(self.use_reference_ops).aligned_upsample(y, factor)
        return self.tower(x)
