"""FCOS head: classification and box towers shared over the FPN levels, plus location grids."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ...config import ConfigError


def compute_locations(height: int, width: int, stride: int, device: torch.device) -> Tensor:
    """Image coordinates of the centres of a feature map's cells.

    Cell (y, x) of a stride-``s`` map sits at (x*s + s//2, y*s + s//2) in the (padded) image.

    Returns:
        Tensor [height*width, 2] float32 of (x, y), row-major over (y, x).
    """
    xs = torch.arange(width, dtype=torch.float32, device=device) * stride
    ys = torch.arange(height, dtype=torch.float32, device=device) * stride
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1) + stride // 2


class Scale(nn.Module):
    """A single learnable multiplier (one per FPN level for the box regression)."""

    def __init__(self, init_value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([float(init_value)]))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def _tower(num_convs: int, channels: int, norm: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers.append(nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=True))
        if norm == "GN":
            layers.append(
                nn.GroupNorm(32 if channels % 32 == 0 else math.gcd(channels, 32), channels)
            )
        elif norm not in ("", "none"):
            raise ConfigError(f"config key 'MODEL.FCOS.NORM' must be 'GN' or '', got {norm!r}")
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class FCOSHead(nn.Module):
    """Per-level predictions of FCOS (the "improved" variant AdelaiDet trains CondInst with).

    Two towers of ``num_convs`` [conv3x3 + GN + ReLU] run on every level with shared weights; the
    class logits come from the cls tower, the box distances (l, t, r, b) and the centerness from
    the box tower. Distances are ``relu(scale_level * conv(box_tower))`` — in units of the level's
    stride when the regression targets are normalised by it.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        num_levels: int,
        num_cls_convs: int = 4,
        num_box_convs: int = 4,
        norm: str = "GN",
        prior_prob: float = 0.01,
        use_scale: bool = True,
        centerness_on_reg: bool = True,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.centerness_on_reg = centerness_on_reg
        self.cls_tower = _tower(num_cls_convs, in_channels, norm)
        self.bbox_tower = _tower(num_box_convs, in_channels, norm)
        self.cls_logits = nn.Conv2d(in_channels, num_classes, kernel_size=3, padding=1)
        self.bbox_pred = nn.Conv2d(in_channels, 4, kernel_size=3, padding=1)
        self.ctrness = nn.Conv2d(in_channels, 1, kernel_size=3, padding=1)
        self.scales = nn.ModuleList([Scale(1.0) for _ in range(num_levels)]) if use_scale else None

        for module in (
            self.cls_tower,
            self.bbox_tower,
            self.cls_logits,
            self.bbox_pred,
            self.ctrness,
        ):
            for layer in module.modules():
                if isinstance(layer, nn.Conv2d):
                    nn.init.normal_(layer.weight, std=0.01)
                    nn.init.constant_(layer.bias, 0.0)
        # Focal-loss prior: every location starts as background with probability 1 - prior_prob.
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(
        self, features: list[Tensor], top_module: nn.Module | None = None
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        """Runs the head on every level.

        Args:
            features: L tensors [B, C, H_l, W_l].
            top_module: optional module applied to each level's box tower output (CondInst's
                controller).

        Returns:
            (logits, box_reg, ctrness, top_feats): lists over levels of [B, K, H_l, W_l],
            [B, 4, H_l, W_l] (non-negative l, t, r, b), [B, 1, H_l, W_l] and
            [B, P, H_l, W_l] (empty list without ``top_module``).
        """
        logits, box_reg, ctrness, top_feats = [], [], [], []
        for level, feature in enumerate(features):
            cls_tower = self.cls_tower(feature)
            bbox_tower = self.bbox_tower(feature)
            logits.append(self.cls_logits(cls_tower))
            ctrness.append(self.ctrness(bbox_tower if self.centerness_on_reg else cls_tower))
            reg = self.bbox_pred(bbox_tower)
            if self.scales is not None:
                reg = self.scales[level](reg)
            box_reg.append(F.relu(reg))
            if top_module is not None:
                top_feats.append(top_module(bbox_tower))
        return logits, box_reg, ctrness, top_feats
