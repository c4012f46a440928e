"""IDIP: instance segmentation with IDIP and CondInst on plain PyTorch and idip._C kernels."""

__version__ = "0.1.0"
