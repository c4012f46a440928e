"""IDIP's box-denoising head: time encoders, DynamicConv, the dynamic stages and the shared box head.

Per stage (Sparse R-CNN / DiffusionDet style): RoIAlign of the current boxes, self-attention over
the proposal features, instance interaction with the RoI features through dynamic convolution,
an FFN, then the box head shared by all stages modulates the features with the stage's time
embedding and predicts class logits and box deltas. Boxes are detached between stages.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..box_ops import apply_box_deltas
from ..poolers import MultiLevelRoIPooler, boxes_to_rois

# Sparse R-CNN's delta weights (wx, wy, ww, wh).
BOX_DELTA_WEIGHTS = (2.0, 2.0, 1.0, 1.0)


class SinusoidalTimeEmbedding(nn.Module):
    """Transformer-style sinusoidal embedding of the diffusion time: [B] -> [B, dim] (sin, then cos)."""

    def __init__(self, dim: int):
        super().__init__()
        if dim % 2:
            raise ValueError(f"time embedding dim must be even, got {dim}")
        self.dim = dim

    def forward(self, t: Tensor) -> Tensor:
        half = self.dim // 2
        freqs = torch.exp(
            torch.arange(half, device=t.device, dtype=torch.float32) * (-math.log(10000.0) / half)
        )
        args = t.to(torch.float32)[:, None] * freqs[None, :]
        return torch.cat([args.sin(), args.cos()], dim=-1)


class TimeEncoder(nn.Module):
    """sinusoidal(dim) -> Linear(dim, 4 dim) -> GELU -> Linear(4 dim, 4 dim): [B] -> [B, 4 dim]."""

    def __init__(self, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(
            SinusoidalTimeEmbedding(dim),
            nn.Linear(dim, dim * 4),
            nn.GELU(),
            nn.Linear(dim * 4, dim * 4),
        )

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(t)


class DynamicConv(nn.Module):
    """Sparse R-CNN's instance interaction.

    A Linear on each proposal feature generates two matrices, [dim, dim_dynamic] and
    [dim_dynamic, dim]; the proposal's RoI feature [S*S, dim] is multiplied by the first (LN,
    ReLU) then by the second (LN, ReLU). With ``with_proj`` the result is flattened and projected
    to [dim] (Linear, LN, ReLU); without it, [S*S, dim] is returned (the mask head's variant).

    Args:
        dim: channels of proposal and RoI features.
        dim_dynamic: inner width of the generated matrices.
        pooler_resolution: S, side of the RoI features.
        with_proj: project the flattened result back to ``dim``.
    """

    def __init__(self, dim: int, dim_dynamic: int, pooler_resolution: int, with_proj: bool = True):
        super().__init__()
        self.dim = dim
        self.dim_dynamic = dim_dynamic
        self.num_params = dim * dim_dynamic
        self.dynamic_layer = nn.Linear(dim, 2 * self.num_params)
        self.norm1 = nn.LayerNorm(dim_dynamic)
        self.norm2 = nn.LayerNorm(dim)
        self.activation = nn.ReLU(inplace=True)
        self.with_proj = with_proj
        if with_proj:
            self.out_layer = nn.Linear(dim * pooler_resolution**2, dim)
            self.norm3 = nn.LayerNorm(dim)

    def forward(self, proposal_feat: Tensor, roi_feat: Tensor) -> Tensor:
        """proposal_feat [K, dim], roi_feat [K, dim, S, S] -> [K, dim] (with_proj) or [K, S*S, dim]."""
        k = proposal_feat.shape[0]
        features = roi_feat.flatten(2).transpose(1, 2)  # [K, S*S, dim]
        params = self.dynamic_layer(proposal_feat)
        param1 = params[:, : self.num_params].view(k, self.dim, self.dim_dynamic)
        param2 = params[:, self.num_params :].view(k, self.dim_dynamic, self.dim)
        features = self.activation(self.norm1(torch.bmm(features, param1)))
        features = self.activation(self.norm2(torch.bmm(features, param2)))
        if not self.with_proj:
            return features
        features = self.out_layer(features.flatten(1))
        return self.activation(self.norm3(features))


class DynamicStage(nn.Module):
    """One refinement stage's feature update: self-attention, DynamicConv, FFN (each + residual + LN).

    Args:
        dim: proposal feature width.
        num_attn_heads: heads of the self-attention.
        dim_feedforward: hidden width of the FFN.
        dim_dynamic: DynamicConv inner width.
        pooler_resolution: side of the RoI features.
        dropout: dropout after attention, interaction and FFN (0 in the authors' code).
    """

    def __init__(
        self,
        dim: int,
        num_attn_heads: int,
        dim_feedforward: int,
        dim_dynamic: int,
        pooler_resolution: int,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(
            dim, num_attn_heads, dropout=dropout, batch_first=True
        )
        self.norm1 = nn.LayerNorm(dim)
        self.inst_interact = DynamicConv(dim, dim_dynamic, pooler_resolution, with_proj=True)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, dim_feedforward),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(dim_feedforward, dim),
        )
        self.norm3 = nn.LayerNorm(dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, proposal_feat: Tensor, roi_feat: Tensor) -> Tensor:
        """proposal_feat [B, N, dim], roi_feat [B*N, dim, S, S] -> [B, N, dim]."""
        b, n, d = proposal_feat.shape
        attn = self.self_attn(proposal_feat, proposal_feat, proposal_feat, need_weights=False)[0]
        x = self.norm1(proposal_feat + self.dropout1(attn)).reshape(b * n, d)
        x = self.norm2(x + self.dropout2(self.inst_interact(x, roi_feat)))
        x = self.norm3(x + self.dropout3(self.ffn(x)))
        return x.reshape(b, n, d)


class BoxHead(nn.Module):
    """Shared class/box predictor, modulated by a stage's time embedding.

    ``scale, shift = Linear(SiLU(time_emb))``; ``f = feat * (scale + 1) + shift``; the classifier is
    [Linear(no bias) + LN + ReLU] -> Linear(num_classes); the regressor is num_reg x [Linear(no bias)
    + LN + ReLU] -> Linear(4).

    Args:
        dim: proposal feature width (the time embedding is 4 * dim wide).
        num_classes: foreground classes (sigmoid classification, no background logit).
        num_cls_layers: hidden layers of the classifier.
        num_reg_layers: hidden layers of the regressor.
    """

    def __init__(
        self, dim: int, num_classes: int, num_cls_layers: int = 1, num_reg_layers: int = 3
    ):
        super().__init__()

        def block() -> nn.Module:
            return nn.Sequential(
                nn.Linear(dim, dim, bias=False), nn.LayerNorm(dim), nn.ReLU(inplace=True)
            )

        self.time_mlp = nn.Sequential(nn.SiLU(), nn.Linear(dim * 4, dim * 2))
        self.cls_layers = nn.Sequential(*[block() for _ in range(num_cls_layers)])
        self.reg_layers = nn.Sequential(*[block() for _ in range(num_reg_layers)])
        self.class_logits = nn.Linear(dim, num_classes)
        self.box_deltas = nn.Linear(dim, 4)

    def forward(self, feat: Tensor, time_emb: Tensor) -> tuple[Tensor, Tensor]:
        """feat [B, N, dim], time_emb [B, 4 dim] -> (logits [B, N, num_classes], deltas [B, N, 4])."""
        scale, shift = self.time_mlp(time_emb)[:, None, :].chunk(2, dim=-1)
        x = feat * (scale + 1) + shift
        return self.class_logits(self.cls_layers(x)), self.box_deltas(self.reg_layers(x))


def prior_bias(prior_prob: float) -> float:
    """The logit whose sigmoid is ``prior_prob`` (-4.595 for 0.01)."""
    return -math.log((1 - prior_prob) / prior_prob)


def init_prior_bias(
    modules: list[nn.Module], num_classes: int, prior_prob: float, by_shape: bool
) -> None:
    """Sets the focal-loss prior in the class outputs of IDIP's box and mask heads.

    ``by_shape`` is the authors' rule: every parameter whose last dimension is ``num_classes``
    (the classifier's and the mask predictor's biases, and any other parameter that happens to
    have that size); otherwise exactly the biases of the modules' class outputs (``class_logits``
    of the box head, ``predictor`` of the mask head).
    """
    value = prior_bias(prior_prob)
    for module in modules:
        if by_shape:
            for p in module.parameters():
                if p.dim() > 0 and p.shape[-1] == num_classes:
                    nn.init.constant_(p, value)
        else:
            for name, sub in module.named_modules():
                if name.endswith(("class_logits", "predictor")) and sub.bias is not None:
                    nn.init.constant_(sub.bias, value)


class IDIPHead(nn.Module):
    """The multi-stage denoising head.

    Args:
        num_classes: foreground classes.
        strides: strides of the feature levels it pools from (8, 16, 32).
        dim: proposal feature width (= FPN channels).
        num_stages: refinement stages (6).
        num_attn_heads, dim_feedforward, dim_dynamic, dropout: see :class:`DynamicStage`.
        pooler_resolution: RoI side (7).
        sampling_ratio: RoIAlign samples per bin side (2).
        prior_prob: initial foreground probability of the classifier's bias (0.01).
        num_cls_layers, num_reg_layers: hidden layers of the shared classifier (1) and regressor (3).
        use_reference_ops: pool with ``idip.ops.reference`` instead of the kernels.
    """

    def __init__(
        self,
        num_classes: int,
        strides: list[int],
        dim: int = 256,
        num_stages: int = 6,
        num_attn_heads: int = 8,
        dim_feedforward: int = 2048,
        dim_dynamic: int = 64,
        pooler_resolution: int = 7,
        sampling_ratio: int = 2,
        dropout: float = 0.0,
        prior_prob: float = 0.01,
        num_cls_layers: int = 1,
        num_reg_layers: int = 3,
        use_reference_ops: bool = False,
    ):
        super().__init__()
        self.pooler = MultiLevelRoIPooler(
            pooler_resolution, strides, sampling_ratio, use_reference_ops
        )
        self.stages = nn.ModuleList(
            DynamicStage(
                dim, num_attn_heads, dim_feedforward, dim_dynamic, pooler_resolution, dropout
            )
            for _ in range(num_stages)
        )
        self.time_encoders = nn.ModuleList(TimeEncoder(dim) for _ in range(num_stages))
        self.box_head = BoxHead(dim, num_classes, num_cls_layers, num_reg_layers)
        # The authors keep PyTorch's default initialisation (DiffusionDet applies xavier to every
        # matrix) apart from the focal-loss prior: see init_prior_bias.
        nn.init.constant_(self.box_head.class_logits.bias, prior_bias(prior_prob))

    def forward(self, features: list[Tensor], boxes: Tensor, t: Tensor) -> list[dict[str, Tensor]]:
        """Runs every stage from the (noisy) input boxes.

        Args:
            features: FPN maps, finest first, [B, C, H_l, W_l].
            boxes: [B, N, 4] absolute xyxy input boxes.
            t: [B] diffusion times.

        Returns:
            One dict per stage: ``logits`` [B, N, num_classes], ``boxes`` [B, N, 4] absolute xyxy
            (differentiable), ``proposal_feat`` [B, N, dim].
        """
        b, n, _ = boxes.shape
        boxes = boxes.detach()
        proposal_feat = None
        outputs = []
        for stage, time_encoder in zip(self.stages, self.time_encoders):
            roi_feat = self.pooler(features, boxes_to_rois(boxes))
            if proposal_feat is None:
                proposal_feat = roi_feat.flatten(2).mean(-1).reshape(b, n, -1)
            proposal_feat = stage(proposal_feat, roi_feat)
            logits, deltas = self.box_head(proposal_feat, time_encoder(t))
            # Decoded in float32: bf16/fp16 (autocast) cannot hold pixel coordinates of large images.
            pred_boxes = apply_box_deltas(deltas.float(), boxes.float(), BOX_DELTA_WEIGHTS)
            outputs.append({"logits": logits, "boxes": pred_boxes, "proposal_feat": proposal_feat})
            boxes = pred_boxes.detach()
        return outputs
