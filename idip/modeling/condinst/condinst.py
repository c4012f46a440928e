"""CondInst (Tian et al., ECCV 2020): FCOS + controller + mask branch + dynamic mask head."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ...config import ConfigError
from ..backbone import build_backbone
from ..build import register_meta_arch
from ..image_batching import batch_images
from ..op_library import op_library
from .dynamic_mask_head import DynamicMaskHead, gt_bitmasks_at_stride
from .fcos import FCOS, FCOSOutputs
from .mask_branch import MaskBranch


def mask_centers_of_mass(masks: Tensor) -> Tensor:
    """[G, H, W] masks -> [G, 2] (x, y) centres of mass in pixel-index coordinates."""
    m = masks.to(torch.float32)
    h, w = m.shape[-2:]
    total = m.sum(dim=(1, 2)).clamp(min=1e-6)
    xs = torch.arange(w, dtype=torch.float32, device=m.device)
    ys = torch.arange(h, dtype=torch.float32, device=m.device)
    cx = (m.sum(dim=1) * xs).sum(dim=1) / total
    cy = (m.sum(dim=2) * ys).sum(dim=1) / total
    return torch.stack([cx, cy], dim=1)


@register_meta_arch("CondInst")
class CondInst(nn.Module):
    """CondInst, configured by ``MODEL.*`` (backbone/FPN, ``MODEL.FCOS``, ``MODEL.CONDINST``).

    Train mode: ``model(batch) -> {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr",
    "loss_mask"}``. Eval mode: one dict per image with ``boxes`` [K, 4] (xyxy, original image
    coordinates), ``scores`` [K], ``labels`` [K] int64 and ``masks`` [K, height, width] bool.
    """

    num_classes_key = "MODEL.FCOS.NUM_CLASSES"  # the config key of num_classes (engine checks)

    def __init__(
        self,
        *,
        backbone: nn.Module,
        fcos: FCOS,
        mask_branch: MaskBranch,
        mask_head: DynamicMaskHead,
        mask_out_stride: int,
        max_proposals: int,
        mask_loss_at_feat_stride: bool,
        mask_threshold: float,
        center_sample_on_mask: bool,
        pixel_mean: list[float],
        pixel_std: list[float],
        use_reference_ops: bool = False,
    ):
        """Use :meth:`from_config` for the arguments a config gives (``build_model`` does)."""
        super().__init__()
        if mask_branch.out_stride % mask_out_stride:
            raise ConfigError(
                f"config key 'MODEL.CONDINST.MASK_OUT_STRIDE' ({mask_out_stride}) must divide the "
                f"mask branch's stride ({mask_branch.out_stride})"
            )
        self.backbone = backbone
        self.fcos = fcos
        self.mask_branch = mask_branch
        self.mask_head = mask_head
        self.num_classes = fcos.num_classes
        self.mask_out_stride = mask_out_stride
        self.max_proposals = max_proposals
        self.mask_loss_at_feat_stride = mask_loss_at_feat_stride
        self.mask_threshold = mask_threshold
        self.center_sample_on_mask = center_sample_on_mask
        self.use_reference_ops = bool(use_reference_ops)
        self.controller = nn.Conv2d(fcos.in_channels, mask_head.num_gen_params, 3, padding=1)
        nn.init.normal_(self.controller.weight, std=0.01)
        nn.init.constant_(self.controller.bias, 0.0)
        # The batch is padded so that every FPN level divides it exactly and the stride-4 GT grid fits.
        base = int(getattr(backbone, "size_divisibility", 0) or 1)
        self.size_divisibility = math.lcm(base, 32, mask_out_stride)
        self.register_buffer(
            "pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(3, 1, 1), False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(3, 1, 1), False
        )

    @classmethod
    def from_config(cls, cfg) -> dict:
        """The constructor's arguments from ``MODEL.*`` (backbone/FPN, ``MODEL.FCOS``,
        ``MODEL.CONDINST``)."""
        c = cfg.MODEL.CONDINST
        reference = bool(cfg.MODEL.USE_REFERENCE_OPS)
        backbone = build_backbone(cfg)
        input_shape = {k: tuple(v) for k, v in backbone.output_shape().items()}
        mask_out_stride = int(c.MASK_OUT_STRIDE)
        mask_branch = MaskBranch(
            input_shape,
            list(c.MASK_BRANCH.IN_FEATURES),
            channels=int(c.MASK_BRANCH.CHANNELS),
            num_convs=int(c.MASK_BRANCH.NUM_CONVS),
            out_channels=int(c.MASK_BRANCH.OUT_CHANNELS),
            norm=c.MASK_BRANCH.NORM,
            use_reference_ops=reference,
        )
        soi = [float(s) for s in cfg.MODEL.FCOS.SIZES_OF_INTEREST]
        mask_head = DynamicMaskHead(
            reference,
            in_channels=int(c.MASK_BRANCH.OUT_CHANNELS),
            channels=int(c.MASK_HEAD.CHANNELS),
            num_layers=int(c.MASK_HEAD.NUM_LAYERS),
            # One normaliser per FCOS level: the level's upper size of interest, 2x the last for P7.
            sizes_of_interest=soi + [soi[-1] * 2],
            mask_out_stride=mask_out_stride,
            rel_coords=not bool(c.MASK_HEAD.DISABLE_REL_COORDS),
        )
        return dict(
            backbone=backbone,
            fcos=FCOS(cfg, input_shape),
            mask_branch=mask_branch,
            mask_head=mask_head,
            mask_out_stride=mask_out_stride,
            max_proposals=int(c.MAX_PROPOSALS),
            mask_loss_at_feat_stride=bool(c.MASK_LOSS_AT_FEAT_STRIDE),
            mask_threshold=float(c.MASK_THRESHOLD),
            center_sample_on_mask=bool(cfg.MODEL.FCOS.CENTER_SAMPLE_ON_MASK),
            pixel_mean=list(cfg.MODEL.PIXEL_MEAN),
            pixel_std=list(cfg.MODEL.PIXEL_STD),
            use_reference_ops=reference,
        )

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def forward(self, batch: list[dict]):
        if len(batch) == 0:
            if not self.training:
                return []  # nothing to predict: an empty list of results, like any batch
            raise ValueError("CondInst got an empty training batch")
        images = [
            (s["image"].to(self.device, torch.float32) - self.pixel_mean) / self.pixel_std
            for s in batch
        ]
        padded, image_sizes = batch_images(images, self.size_divisibility)
        features = self.backbone(padded)
        mask_feats = self.mask_branch(features)
        outputs = self.fcos(features, self.controller)
        if self.training:
            return self._losses(batch, outputs, mask_feats, tuple(padded.shape[-2:]))
        return self._inference(batch, outputs, mask_feats, image_sizes)

    # --------------------------------------------------------------------------------------------
    def _losses(
        self,
        batch: list[dict],
        outputs: FCOSOutputs,
        mask_feats: Tensor,
        padded_size: tuple[int, int],
    ) -> dict[str, Tensor]:
        gt_boxes, gt_classes, gt_masks = [], [], []
        for i, sample in enumerate(batch):
            if "instances" not in sample:
                raise ValueError(
                    f"training sample {i} ({sample.get('file_name', '?')}) has no 'instances'"
                )
            inst = sample["instances"]
            gt_boxes.append(inst["boxes"].to(self.device, torch.float32))
            gt_classes.append(inst["classes"].to(self.device, torch.long))
            gt_masks.append(inst["masks"].to(self.device))
        centers = (
            [mask_centers_of_mass(m) for m in gt_masks] if self.center_sample_on_mask else None
        )
        targets = self.fcos.targets(outputs, gt_boxes, gt_classes, centers)
        losses, pos_mask = self.fcos.losses(outputs, targets)

        im_inds, loc_inds = pos_mask.nonzero(as_tuple=True)
        if 0 <= self.max_proposals < im_inds.numel():
            pick = torch.randperm(im_inds.numel(), device=im_inds.device)[: self.max_proposals]
            im_inds, loc_inds = im_inds[pick], loc_inds[pick]
        params = outputs.top_feats[im_inds, loc_inds]
        if im_inds.numel() == 0:
            # Zero-valued, but keeps the mask branch and controller in the graph (DDP needs them).
            losses["loss_mask"] = mask_feats.sum() * 0.0 + outputs.top_feats.sum() * 0.0
            return losses
        out_stride = (
            self.mask_branch.out_stride if self.mask_loss_at_feat_stride else self.mask_out_stride
        )
        logits = self.mask_head(
            mask_feats,
            self.mask_branch.out_stride,
            params,
            im_inds,
            outputs.locations[loc_inds],
            outputs.levels[loc_inds],
            out_stride=out_stride,
        )
        gt_bitmasks = torch.cat(
            [gt_bitmasks_at_stride(m, padded_size, out_stride) for m in gt_masks]
        )
        gt_bitmasks = gt_bitmasks[targets.gt_inds[im_inds, loc_inds]].to(logits.dtype)
        losses["loss_mask"] = self.mask_head.loss(logits, gt_bitmasks)
        return losses

    # --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _inference(
        self,
        batch: list[dict],
        outputs: FCOSOutputs,
        mask_feats: Tensor,
        image_sizes: list[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        detections = self.fcos.predict(
            outputs, op_library(self.use_reference_ops).batched_nms, image_sizes
        )
        padded_h = mask_feats.shape[-2] * self.mask_branch.out_stride
        results = []
        for i, (sample, det, (h, w)) in enumerate(zip(batch, detections, image_sizes)):
            out_h = int(sample.get("height", h))
            out_w = int(sample.get("width", w))
            boxes = det["boxes"].clone()
            boxes[:, 0::2] = (boxes[:, 0::2] * (out_w / w)).clamp(0, out_w)
            boxes[:, 1::2] = (boxes[:, 1::2] * (out_h / h)).clamp(0, out_h)
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            idx = keep.nonzero().squeeze(1)
            masks = self._paste_masks(
                mask_feats[i : i + 1],
                det["params"][idx],
                det["locations"][idx],
                det["levels"][idx],
                (h, w),
                (out_h, out_w),
                padded_h,
            )
            results.append(
                {
                    "boxes": boxes[idx],
                    "scores": det["scores"][idx],
                    "labels": det["labels"][idx].to(torch.int64),
                    "masks": masks,
                }
            )
        return results

    def _paste_masks(
        self,
        mask_feats: Tensor,
        params: Tensor,
        locations: Tensor,
        levels: Tensor,
        image_size: tuple[int, int],
        out_size: tuple[int, int],
        padded_h: int,
        chunk: int = 32,
    ) -> Tensor:
        """Masks of one image's detections: stride-4 probabilities -> aligned upsample to the
        padded input -> crop the padding -> bilinear resize to the original size -> threshold.

        Returns:
            [D, out_h, out_w] bool.
        """
        n = params.shape[0]
        out_h, out_w = out_size
        if n == 0:
            return torch.zeros((0, out_h, out_w), dtype=torch.bool, device=mask_feats.device)
        im_inds = torch.zeros(n, dtype=torch.long, device=mask_feats.device)
        probs = self.mask_head(
            mask_feats, self.mask_branch.out_stride, params, im_inds, locations, levels
        ).sigmoid()
        factor = padded_h // probs.shape[-2]
        h, w = image_size
        masks = []
        # Full-resolution float masks are large: upsample a few instances at a time.
        for start in range(0, n, chunk):
            p = probs[start : start + chunk]
            if factor > 1:
                p = op_library(self.use_reference_ops).aligned_upsample(p, factor)
            p = F.interpolate(
                p[:, :, :h, :w], size=(out_h, out_w), mode="bilinear", align_corners=False
            )
            masks.append(p[:, 0] > self.mask_threshold)
        return torch.cat(masks)
