"""Backbones: ResNet (torchvision layout, FrozenBN) and FPN, with weight loading."""
