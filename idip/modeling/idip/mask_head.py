"""IDIP's RoI mask head: 14x14 RoI features, DynamicConv with the proposal feature, 4 convs, 2x up."""

from __future__ import annotations

from torch import Tensor, nn

from ..poolers import MultiLevelRoIPooler
from ..segmented_batch_norm import SegmentedBatchNorm2d
from .head import DynamicConv


class MaskHead(nn.Module):
    """Predicts per-class mask logits at 2*S x 2*S (28x28) for each box.

    RoIAlign S x S (14) on the FPN levels -> DynamicConv (no projection) conditioned on the
    proposal feature -> num_convs x [conv3x3 + BN + ReLU] -> ConvTranspose 2x2 stride 2 (no bias)
    + ReLU -> conv1x1 to num_classes channels.

    Args:
        num_classes: foreground classes.
        strides: feature level strides (8, 16, 32).
        dim: feature width.
        dim_dynamic: DynamicConv inner width.
        pooler_resolution: S.
        sampling_ratio: RoIAlign samples per bin side (0 adaptive).
        num_convs: 3x3 conv layers.
        with_dynamic: apply the DynamicConv (the authors' default: True).
        norm: "BN" (the authors'), "GN" or "" for the conv layers.
        norm_per_image: with "BN", training statistics per image (the authors run the head once
            per image), over the batched RoIs (SegmentedBatchNorm2d); False: over all RoIs.
        use_reference_ops: pool with ``idip.ops.reference`` instead of the kernels.
    """

    def __init__(
        self,
        num_classes: int,
        strides: list[int],
        dim: int = 256,
        dim_dynamic: int = 64,
        pooler_resolution: int = 14,
        sampling_ratio: int = 0,
        num_convs: int = 4,
        with_dynamic: bool = True,
        norm: str = "BN",
        norm_per_image: bool = True,
        use_reference_ops: bool = False,
    ):
        super().__init__()
        self.pooler = MultiLevelRoIPooler(
            pooler_resolution, strides, sampling_ratio, use_reference_ops
        )
        self.dynamic = (
            DynamicConv(dim, dim_dynamic, pooler_resolution, with_proj=False)
            if with_dynamic
            else None
        )
        layers = []
        for _ in range(num_convs):
            layers.append(nn.Conv2d(dim, dim, 3, padding=1, bias=not norm))
            if norm == "BN":
                layers.append(SegmentedBatchNorm2d(dim) if norm_per_image else nn.BatchNorm2d(dim))
            elif norm == "GN":
                layers.append(nn.GroupNorm(32, dim))
            elif norm:
                raise ValueError(f"mask head norm must be 'BN', 'GN' or '', got {norm!r}")
            layers.append(nn.ReLU(inplace=True))
        self.convs = nn.Sequential(*layers)
        self.upsample = nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.predictor = nn.Conv2d(dim, num_classes, kernel_size=1)

    def forward(self, features: list[Tensor], rois: Tensor, proposal_feat: Tensor) -> Tensor:
        """Mask logits for ``rois``.

        Args:
            features: FPN maps, finest first, [B, C, H_l, W_l].
            rois: [K, 5] (batch_index, x1, y1, x2, y2) absolute boxes; gradients do not flow to them.
            proposal_feat: [K, dim] the boxes' proposal features.

        Returns:
            [K, num_classes, 2*S, 2*S] logits.
        """
        roi_feat = self.pooler(features, rois.detach())
        if self.dynamic is not None and roi_feat.shape[0] > 0:
            k, c, s, _ = roi_feat.shape
            roi_feat = self.dynamic(proposal_feat, roi_feat).transpose(1, 2).reshape(k, c, s, s)
        if roi_feat.shape[0] == 0:
            # BatchNorm refuses empty batches in training; the result is empty anyway.
            s2 = 2 * roi_feat.shape[-1]
            return roi_feat.new_zeros((0, self.predictor.out_channels, s2, s2)) + 0 * sum(
                p.sum() for p in self.parameters()
            )
        x = roi_feat
        images = rois[:, 0].long()
        for layer in self.convs:
            if isinstance(layer, SegmentedBatchNorm2d):
                x = layer(x, images, features[0].shape[0])
            else:
                x = layer(x)
        x = self.relu(self.upsample(x))
        return self.predictor(x)
