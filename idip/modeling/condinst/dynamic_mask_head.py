"""CondInst's dynamic mask head: parameter layout, the fused op call, Dice loss, GT bitmasks."""

from __future__ import annotations

import importlib
from types import ModuleType

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ...config import ConfigError


def dynamic_param_counts(
    in_channels: int, channels: int, num_layers: int, rel_coords: bool = True
) -> tuple[list[int], list[int]]:
    """Sizes of the weight and bias blocks of the per-instance network.

    Layer 0 maps ``in_channels`` (+2 relative coordinates) to ``channels``, middle layers map
    ``channels`` to ``channels`` and the last maps ``channels`` to 1.

    Returns:
        (weight_nums, bias_nums), each a list of ``num_layers`` ints. Their total is the number
        of parameters the controller predicts per location (169 for 8 channels and 3 layers).
    """
    if num_layers < 1:
        raise ConfigError(f"config key 'MODEL.CONDINST.MASK_HEAD.NUM_LAYERS' must be >= 1, got {num_layers}")
    weight_nums, bias_nums = [], []
    for layer in range(num_layers):
        fan_in = (in_channels + 2 if rel_coords else in_channels) if layer == 0 else channels
        fan_out = 1 if layer == num_layers - 1 else channels
        weight_nums.append(fan_in * fan_out)
        bias_nums.append(fan_out)
    return weight_nums, bias_nums


def split_dynamic_params(
    params: Tensor, in_channels: int, channels: int, num_layers: int, rel_coords: bool = True
) -> tuple[list[Tensor], list[Tensor]]:
    """Views [N, P] controller outputs as per-layer weights and biases (CondInst's layout).

    All weight blocks come first, then all bias blocks; layer l's weight block is [out_l, in_l]
    row-major.

    Returns:
        (weights, biases): lists over layers of [N, out_l, in_l] and [N, out_l].
    """
    weight_nums, bias_nums = dynamic_param_counts(in_channels, channels, num_layers, rel_coords)
    if params.dim() != 2 or params.shape[1] != sum(weight_nums) + sum(bias_nums):
        raise ValueError(
            f"params must be [N, {sum(weight_nums) + sum(bias_nums)}], got {tuple(params.shape)}"
        )
    blocks = torch.split(params, weight_nums + bias_nums, dim=1)
    n = params.shape[0]
    weights = [w.reshape(n, b, w.shape[1] // b) for w, b in zip(blocks[:num_layers], bias_nums)]
    biases = list(blocks[num_layers:])
    return weights, biases


def dice_loss(scores: Tensor, targets: Tensor, eps: float = 1e-5) -> Tensor:
    """1 - 2 sum(p t) / (sum(p^2) + sum(t^2) + eps) per instance.

    Args:
        scores: [N, ...] probabilities.
        targets: [N, ...] {0, 1} masks of the same shape.

    Returns:
        [N] losses.
    """
    n = scores.shape[0]
    p = scores.reshape(n, -1)
    t = targets.reshape(n, -1).to(p.dtype)
    inter = (p * t).sum(dim=1)
    union = (p * p).sum(dim=1) + (t * t).sum(dim=1) + eps
    return 1.0 - 2.0 * inter / union


def gt_bitmasks_at_stride(masks: Tensor, padded_size: tuple[int, int], stride: int) -> Tensor:
    """Ground-truth masks sampled on the mask-output grid, AdelaiDet's way.

    The masks are zero-padded (bottom/right) to the batch's padded size, then every
    ``stride``-th pixel is taken starting at ``stride // 2`` — the pixel at the centre of each
    output cell.

    Args:
        masks: [G, H, W] bool/uint8/float masks in the resized image.
        padded_size: (Hp, Wp), multiples of ``stride``.
        stride: output stride.

    Returns:
        [G, Hp // stride, Wp // stride] float32.
    """
    hp, wp = padded_size
    if hp % stride or wp % stride:
        raise ValueError(f"padded size {padded_size} is not a multiple of the mask stride {stride}")
    h, w = masks.shape[-2:]
    full = F.pad(masks.to(torch.float32), (0, wp - w, 0, hp - h))
    start = stride // 2
    return full[:, start::stride, start::stride]


class DynamicMaskHead(nn.Module):
    """Runs the per-instance networks through ``ops.dynamic_mask_head`` and scores them.

    Args:
        use_reference_ops: run ``idip.ops.reference`` instead of the compiled ``idip.ops``.
        in_channels: mask-branch channels C.
        channels: hidden channels of the per-instance network.
        num_layers: 1x1 layers of the per-instance network.
        sizes_of_interest: per-FPN-level normaliser of the relative coordinates
            (FCOS's [64, 128, 256, 512] plus twice the last: [.., 1024]).
        mask_out_stride: stride of the masks the loss and inference use (4).
        rel_coords: feed relative coordinates.
    """

    def __init__(
        self,
        use_reference_ops: bool,
        in_channels: int,
        channels: int,
        num_layers: int,
        sizes_of_interest: list[float],
        mask_out_stride: int = 4,
        rel_coords: bool = True,
    ):
        super().__init__()
        self.use_reference_ops = use_reference_ops
        self.in_channels = in_channels
        self.channels = channels
        self.num_layers = num_layers
        self.mask_out_stride = mask_out_stride
        self.rel_coords = rel_coords
        weight_nums, bias_nums = dynamic_param_counts(in_channels, channels, num_layers, rel_coords)
        self.num_gen_params = sum(weight_nums) + sum(bias_nums)
        self.register_buffer(
            "sizes_of_interest", torch.tensor(sizes_of_interest, dtype=torch.float32), persistent=False
        )

    @property
    def ops(self) -> ModuleType:
        # Resolved on use so that the module holds no reference to a Python module (picklable).
        return importlib.import_module("idip.ops.reference" if self.use_reference_ops else "idip.ops")

    def forward(
        self,
        mask_feats: Tensor,
        mask_feat_stride: int,
        params: Tensor,
        im_inds: Tensor,
        locations: Tensor,
        levels: Tensor,
        out_stride: int | None = None,
    ) -> Tensor:
        """Mask logits of N instances.

        Args:
            mask_feats: [B, C, H, W] mask-branch output at ``mask_feat_stride``.
            params: [N, P] controller outputs.
            im_inds: [N] int64 image of each instance.
            locations: [N, 2] (x, y) of the location that predicted each instance.
            levels: [N] int64 FPN level of that location.
            out_stride: stride of the returned logits (``mask_out_stride`` when None); the op's
                stride-``mask_feat_stride`` logits are aligned-upsampled by
                ``mask_feat_stride // out_stride``.

        Returns:
            [N, 1, H * f, W * f] logits, f = mask_feat_stride // out_stride.
        """
        out_stride = self.mask_out_stride if out_stride is None else out_stride
        if mask_feat_stride % out_stride:
            raise ValueError(
                f"mask feature stride {mask_feat_stride} is not a multiple of the mask output stride {out_stride}"
            )
        factor = mask_feat_stride // out_stride
        n = params.shape[0]
        h, w = mask_feats.shape[-2:]
        if n == 0:
            return mask_feats.new_zeros((0, 1, h * factor, w * factor))
        # Coordinates stay float32 under autocast: the relative coordinates need the precision.
        soi = self.sizes_of_interest[levels].float()
        logits = self.ops.dynamic_mask_head(
            mask_feats,
            params.to(mask_feats.dtype),
            im_inds,
            locations.float(),
            soi,
            int(mask_feat_stride),
            self.channels,
            self.num_layers,
            self.rel_coords,
        )
        if factor > 1:
            logits = self.ops.aligned_upsample(logits, factor)
        return logits

    def loss(self, mask_logits: Tensor, gt_bitmasks: Tensor) -> Tensor:
        """Mean Dice loss of [N, 1, h, w] logits against [N, h, w] {0, 1} targets."""
        return dice_loss(mask_logits.float().sigmoid(), gt_bitmasks.unsqueeze(1)).mean()
