"""Feature Pyramid Network over a bottom-up backbone, with the optional FCOS P6/P7 top block."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .norm import get_norm
from .resnet import ShapeSpec

FPN_NORMS = ("", "GN", "BN")
TOP_BLOCKS = (None, "P6P7")


def c2_xavier_fill(module: nn.Conv2d) -> None:
    """Caffe2's XavierFill as detectron2 uses it: kaiming_uniform with a=1, zero bias."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


class Conv2dNorm(nn.Conv2d):
    """A Conv2d followed by an optional normalisation held as ``.norm``.

    Keeps detectron2's checkpoint names (``fpn_lateral3.weight``, ``fpn_lateral3.norm.weight``).
    Shape: as the convolution.
    """

    def __init__(self, *args, norm: nn.Module | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        return x if self.norm is None else self.norm(x)


class LastLevelP6P7(nn.Module):
    """FCOS/CondInst extra levels: P6 = conv3x3/2(P5), P7 = conv3x3/2(relu(P6)).

    Shape: p5 [N, C, H, W] -> (p6 [N, C, ceil(H/2), ceil(W/2)], p7 [N, C, ceil(H/4), ceil(W/4)]).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.p6 = nn.Conv2d(channels, channels, 3, 2, 1)
        self.p7 = nn.Conv2d(channels, channels, 3, 2, 1)
        for conv in (self.p6, self.p7):
            c2_xavier_fill(conv)

    def forward(self, p5: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p6 = self.p6(p5)
        p7 = self.p7(F.relu(p6))
        return p6, p7


class FPN(nn.Module):
    """Top-down feature pyramid (lateral 1x1 + nearest upsampling + sum + 3x3 output conv).

    Outputs are named ``p{log2(stride)}``: in_features res3..res5 give p3, p4, p5, and the "P6P7"
    top block adds p6 and p7 computed from the p5 output.

    Args:
        bottom_up: a backbone with ``output_shape()`` (name -> (channels, stride)) whose forward
            returns a dict holding at least ``in_features``.
        in_features: bottom-up features used, in any order; their strides must double from one
            to the next once sorted.
        out_channels: channels of every pyramid level.
        norm: "", "GN" or "BN" after the lateral and output convs (convs have biases only
            without a norm).
        top_block: None (or "") or "P6P7".

    Attributes:
        size_divisibility: the largest stride among ``in_features``; padding the input to a
            multiple of it makes every top-down upsampling exact. P6/P7 are strided convs and
            need no further padding (detectron2 and AdelaiDet do the same).

    Shape:
        input [N, 3, H, W] -> dict "p{k}" -> [N, out_channels, H/2**k, W/2**k].
    """

    def __init__(
        self,
        bottom_up: nn.Module,
        in_features: Sequence[str],
        out_channels: int = 256,
        norm: str = "",
        top_block: str | None = None,
    ):
        super().__init__()
        if norm not in FPN_NORMS:
            raise ValueError(f"FPN norm must be one of {list(FPN_NORMS)}; got norm={norm!r}")
        top_block = top_block or None
        if top_block not in TOP_BLOCKS:
            raise ValueError(
                f"FPN top_block must be None, '' or 'P6P7'; got top_block={top_block!r}"
            )
        if not in_features:
            raise ValueError("FPN in_features is empty")
        input_shapes = bottom_up.output_shape()
        for name in in_features:
            if name not in input_shapes:
                raise ValueError(
                    f"FPN in_features names {name!r}, which the bottom-up backbone does not "
                    f"return; it returns {list(input_shapes)}"
                )
        self.bottom_up = bottom_up
        self.in_features = tuple(sorted(in_features, key=lambda n: input_shapes[n].stride))
        strides = [input_shapes[n].stride for n in self.in_features]
        for low, high in zip(strides, strides[1:]):
            if high != 2 * low:
                raise ValueError(
                    f"FPN in_features {list(self.in_features)} have strides {strides}; each "
                    "stride must be twice the previous one"
                )
        for stride in strides:
            if stride & (stride - 1):
                raise ValueError(f"FPN input strides must be powers of two; got {strides}")
        self.out_channels = out_channels
        self.levels = [int(math.log2(s)) for s in strides]

        use_bias = norm == ""
        for name, level in zip(self.in_features, self.levels):
            lateral = Conv2dNorm(
                input_shapes[name].channels,
                out_channels,
                1,
                bias=use_bias,
                norm=get_norm(norm, out_channels),
            )
            output = Conv2dNorm(
                out_channels,
                out_channels,
                3,
                padding=1,
                bias=use_bias,
                norm=get_norm(norm, out_channels),
            )
            c2_xavier_fill(lateral)
            c2_xavier_fill(output)
            self.add_module(f"fpn_lateral{level}", lateral)
            self.add_module(f"fpn_output{level}", output)

        self.top_block = LastLevelP6P7(out_channels) if top_block == "P6P7" else None
        self._out_shapes = {f"p{lvl}": ShapeSpec(out_channels, 2**lvl) for lvl in self.levels}
        if self.top_block is not None:
            top = self.levels[-1]
            for lvl in (top + 1, top + 2):
                self._out_shapes[f"p{lvl}"] = ShapeSpec(out_channels, 2**lvl)
        self.size_divisibility = strides[-1]

    @property
    def out_features(self) -> tuple[str, ...]:
        return tuple(self._out_shapes)

    def output_shape(self) -> dict[str, ShapeSpec]:
        """name -> (channels, stride) of every pyramid level, finest first."""
        return dict(self._out_shapes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Args: x [N, 3, H, W] normalised images. Returns "p{k}" -> [N, C, ~H/2**k, ~W/2**k]."""
        features = self.bottom_up(x)
        results: list[torch.Tensor] = []
        previous = None
        for name, level in zip(reversed(self.in_features), reversed(self.levels)):
            lateral = getattr(self, f"fpn_lateral{level}")(features[name])
            if previous is not None:
                # Upsample to the lateral's exact size so inputs not divisible by
                # size_divisibility still work; equal to scale_factor=2 when they are.
                lateral = lateral + F.interpolate(previous, size=lateral.shape[-2:], mode="nearest")
            previous = lateral
            results.insert(0, getattr(self, f"fpn_output{level}")(lateral))
        if self.top_block is not None:
            results.extend(self.top_block(results[-1]))
        return dict(zip(self._out_shapes, results))
