"""``build_backbone(cfg)``: ResNet + FPN from the MODEL.RESNETS / BACKBONE / FPN config keys."""

from __future__ import annotations

from ...config import ConfigError
from .fpn import FPN, FPN_NORMS
from .norm import NORM_NAMES
from .resnet import RESNET_SPECS, STAGE_NAMES, ResNet, block_expansion


def build_backbone(cfg) -> FPN:
    """Builds the ResNet-FPN backbone described by ``cfg``.

    Reads MODEL.BACKBONE.{NAME, FREEZE_AT}, MODEL.RESNETS.{DEPTH, NORM, STRIDE_IN_1X1,
    OUT_FEATURES, WIDTH_PER_GROUP, STEM_OUT_CHANNELS, RES2_OUT_CHANNELS} and
    MODEL.FPN.{IN_FEATURES, OUT_CHANNELS, NORM, TOP_BLOCK}.
    Pretrained weights are not loaded here (see ``load_backbone_weights``).

    Returns:
        an FPN whose ``bottom_up`` is the ResNet; forward maps [N, 3, H, W] images to
        "p{k}" -> [N, OUT_CHANNELS, H/2**k, W/2**k].
    """
    backbone_cfg, resnet_cfg, fpn_cfg = cfg.MODEL.BACKBONE, cfg.MODEL.RESNETS, cfg.MODEL.FPN
    if backbone_cfg.NAME != "ResNet":
        raise ConfigError(
            f"config key 'MODEL.BACKBONE.NAME' is {backbone_cfg.NAME!r}; only 'ResNet' is available"
        )
    _check(
        resnet_cfg.DEPTH in RESNET_SPECS,
        "MODEL.RESNETS.DEPTH",
        resnet_cfg.DEPTH,
        f"one of {sorted(RESNET_SPECS)}",
    )
    _check(
        resnet_cfg.NORM in NORM_NAMES,
        "MODEL.RESNETS.NORM",
        resnet_cfg.NORM,
        f"one of {list(NORM_NAMES)}",
    )
    _check(
        resnet_cfg.WIDTH_PER_GROUP == 64,
        "MODEL.RESNETS.WIDTH_PER_GROUP",
        resnet_cfg.WIDTH_PER_GROUP,
        "64 (grouped/wide ResNets are not implemented)",
    )
    _check(
        0 <= backbone_cfg.FREEZE_AT <= 5,
        "MODEL.BACKBONE.FREEZE_AT",
        backbone_cfg.FREEZE_AT,
        "in 0..5",
    )
    out_features = list(resnet_cfg.OUT_FEATURES)
    _check(
        bool(out_features) and all(n in STAGE_NAMES for n in out_features),
        "MODEL.RESNETS.OUT_FEATURES",
        out_features,
        f"a non-empty list of {list(STAGE_NAMES)}",
    )
    for name in fpn_cfg.IN_FEATURES:
        _check(
            name in out_features,
            "MODEL.FPN.IN_FEATURES",
            list(fpn_cfg.IN_FEATURES),
            f"a subset of MODEL.RESNETS.OUT_FEATURES {out_features}",
        )
    _check(fpn_cfg.NORM in FPN_NORMS, "MODEL.FPN.NORM", fpn_cfg.NORM, f"one of {list(FPN_NORMS)}")
    _check(
        fpn_cfg.TOP_BLOCK in ("", "P6P7"), "MODEL.FPN.TOP_BLOCK", fpn_cfg.TOP_BLOCK, "'' or 'P6P7'"
    )
    _check(fpn_cfg.OUT_CHANNELS > 0, "MODEL.FPN.OUT_CHANNELS", fpn_cfg.OUT_CHANNELS, "positive")

    expansion = block_expansion(resnet_cfg.DEPTH)
    _check(
        resnet_cfg.STEM_OUT_CHANNELS > 0,
        "MODEL.RESNETS.STEM_OUT_CHANNELS",
        resnet_cfg.STEM_OUT_CHANNELS,
        "positive",
    )
    _check(
        resnet_cfg.RES2_OUT_CHANNELS >= 0 and resnet_cfg.RES2_OUT_CHANNELS % expansion == 0,
        "MODEL.RESNETS.RES2_OUT_CHANNELS",
        resnet_cfg.RES2_OUT_CHANNELS,
        f"0 (the standard width) or a positive multiple of {expansion} for depth {resnet_cfg.DEPTH}",
    )

    bottom_up = ResNet(
        resnet_cfg.DEPTH,
        out_features=out_features,
        norm=resnet_cfg.NORM,
        freeze_at=backbone_cfg.FREEZE_AT,
        stride_in_1x1=resnet_cfg.STRIDE_IN_1X1,
        stem_channels=resnet_cfg.STEM_OUT_CHANNELS,
        res2_channels=resnet_cfg.RES2_OUT_CHANNELS or None,
    )
    return FPN(
        bottom_up,
        in_features=list(fpn_cfg.IN_FEATURES),
        out_channels=fpn_cfg.OUT_CHANNELS,
        norm=fpn_cfg.NORM,
        top_block=fpn_cfg.TOP_BLOCK or None,
    )


def _check(ok: bool, key: str, value, expected: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}' is {value!r}; expected {expected}")
