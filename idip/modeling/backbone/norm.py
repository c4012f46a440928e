"""Normalisation layers for backbones: ``FrozenBatchNorm2d`` and the ``get_norm`` factory."""

from __future__ import annotations

import torch
from torch import nn

NORM_NAMES = ("FrozenBN", "BN", "SyncBN", "GN", "")
GN_GROUPS = 32


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d whose statistics and affine parameters are fixed buffers.

    Computes ``(x - running_mean) / sqrt(running_var + eps) * weight + bias`` per channel, the same
    as ``nn.BatchNorm2d`` in eval mode, in train mode too. All four tensors are buffers (not
    parameters), so an optimizer never sees them and checkpoints keep detectron2's key names.

    The default state is the identity: ``running_var`` starts at ``1 - eps`` so that
    ``weight / sqrt(running_var + eps)`` is exactly 1.

    Args:
        num_features: number of channels C.
        eps: added to the variance, as in ``nn.BatchNorm2d``.

    Shape:
        input [N, C, H, W] -> output [N, C, H, W].
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Fold the four vectors into one scale and one shift: cheaper than F.batch_norm and
        # keeps the computation in x's dtype under autocast.
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1).to(x.dtype) + shift.view(1, -1, 1, 1).to(x.dtype)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # BatchNorm2d checkpoints carry a step counter that has no meaning here.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"

    @classmethod
    def convert_frozen_batchnorm(cls, module: nn.Module) -> nn.Module:
        """Returns ``module`` with every BatchNorm2d / SyncBatchNorm replaced by a frozen copy.

        The statistics and affine parameters are copied. When ``module`` itself is a batch norm
        the new FrozenBatchNorm2d is returned; otherwise children are replaced in place and
        ``module`` is returned.
        """
        if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
            frozen = cls(module.num_features, module.eps)
            reference = _first_tensor(module)
            if reference is not None:
                frozen = frozen.to(device=reference.device, dtype=reference.dtype)
            with torch.no_grad():
                if module.affine:
                    frozen.weight.copy_(module.weight)
                    frozen.bias.copy_(module.bias)
                if module.track_running_stats:
                    frozen.running_mean.copy_(module.running_mean)
                    frozen.running_var.copy_(module.running_var)
            return frozen
        for name, child in module.named_children():
            new_child = cls.convert_frozen_batchnorm(child)
            if new_child is not child:
                setattr(module, name, new_child)
        return module


def revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every SyncBatchNorm replaced by a BatchNorm2d holding the same state.

    SyncBatchNorm only runs on CUDA inside a process group; elsewhere the per-rank BatchNorm is
    the one that computes. The inverse of ``nn.SyncBatchNorm.convert_sync_batchnorm``.
    """
    if isinstance(module, nn.SyncBatchNorm):
        plain = nn.BatchNorm2d(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
        )
        plain.load_state_dict(module.state_dict())
        reference = _first_tensor(module)
        if reference is not None:
            plain = plain.to(device=reference.device, dtype=reference.dtype)
        return plain.train(module.training)
    for name, child in module.named_children():
        new_child = revert_sync_batchnorm(child)
        if new_child is not child:
            setattr(module, name, new_child)
    return module


def _first_tensor(module: nn.Module) -> torch.Tensor | None:
    for tensor in module.state_dict().values():
        if tensor.is_floating_point():
            return tensor
    return None


def get_norm(name: str, channels: int) -> nn.Module | None:
    """Builds a 2d normalisation layer by name.

    Args:
        name: "FrozenBN", "BN" (nn.BatchNorm2d), "SyncBN" (nn.SyncBatchNorm), "GN" (GroupNorm
            with 32 groups) or "" (no normalisation: returns None).
        channels: number of channels normalised.

    Returns:
        the layer, or None for "".
    """
    if name == "":
        return None
    if name == "FrozenBN":
        return FrozenBatchNorm2d(channels)
    if name == "BN":
        return nn.BatchNorm2d(channels)
    if name == "SyncBN":
        return nn.SyncBatchNorm(channels)
    if name == "GN":
        if channels % GN_GROUPS != 0:
            raise ValueError(
                f"norm 'GN' uses {GN_GROUPS} groups, which needs a channel count divisible by "
                f"{GN_GROUPS}; got channels={channels}"
            )
        return nn.GroupNorm(GN_GROUPS, channels)
    raise ValueError(f"unknown norm {name!r}; expected one of {list(NORM_NAMES)}")
