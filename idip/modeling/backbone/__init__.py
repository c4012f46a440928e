"""Backbones: ResNet (torchvision layout, FrozenBN) and FPN, with weight loading."""

from .build import build_backbone
from .fpn import FPN
from .norm import FrozenBatchNorm2d, get_norm
from .resnet import ResNet, ShapeSpec
from .weights import CheckpointError, LoadReport, load_backbone_weights

__all__ = [
    "FPN",
    "CheckpointError",
    "FrozenBatchNorm2d",
    "LoadReport",
    "ResNet",
    "ShapeSpec",
    "build_backbone",
    "get_norm",
    "load_backbone_weights",
]
