"""CondInst's dynamic mask head: the fused op call, Dice loss, GT bitmasks (the parameter layout
is ``idip.ops.dynamic_mask_head_param_counts``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ...config import ConfigError
from ...ops import dynamic_mask_head_num_params
from ..losses import squared_dice_loss
from ..op_library import op_library


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
        if num_layers < 1:
            raise ConfigError(
                f"config key 'MODEL.CONDINST.MASK_HEAD.NUM_LAYERS' must be >= 1, got {num_layers}"
            )
        self.num_gen_params = dynamic_mask_head_num_params(
            in_channels, channels, num_layers, rel_coords
        )
        self.register_buffer(
            "sizes_of_interest",
            torch.tensor(sizes_of_interest, dtype=torch.float32),
            persistent=False,
        )

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
        ops = op_library(self.use_reference_ops)
        logits = ops.dynamic_mask_head(
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
            logits = ops.aligned_upsample(logits, factor)
        return logits

    def loss(self, mask_logits: Tensor, gt_bitmasks: Tensor) -> Tensor:
        """Mean Dice loss of [N, 1, h, w] logits against [N, h, w] {0, 1} targets."""
        return squared_dice_loss(mask_logits.float().sigmoid(), gt_bitmasks.unsqueeze(1)).mean()
