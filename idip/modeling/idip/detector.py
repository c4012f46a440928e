"""The IDIP meta-architecture: ResNet-FPN, diffusion box denoising head, RoI mask head."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...config import ConfigError
from ..backbone import build_backbone
from ..box_ops import clip_boxes
from ..build import register_meta_arch
from ..mask_paste import paste_masks_in_image
from ..poolers import select_ops
from .diffusion import DDIMSampler, DiffusionSchedule, prepare_diffusion_targets
from .head import IDIPHead, init_prior_bias
from .loss import IDIPCriterion
from .mask_head import MaskHead
from .matcher import SimOTAMatcher

# Mixes TEST.SEED and an image id into the seed of that image's sampling generator.
_SEED_STRIDE = 1_000_003


@register_meta_arch("IDIP")
class IDIP(nn.Module):
    """IDIP (Instance-aware Diffusion Implicit Process) for instance segmentation.

    Training: ground-truth boxes are padded to ``NUM_PROPOSALS``, diffused to a random time per
    image, and denoised by the multi-stage head; SimOTA matches each stage's predictions and the
    focal/L1/GIoU/Dice losses are averaged over stages. Inference: DDIM from random boxes
    (``SAMPLE_STEP`` steps, box renewal), top-k over (proposal, class) scores, class-aware NMS,
    masks pasted into the original image.

    Reads ``MODEL.*`` (see the ``MODEL.IDIP`` section of the defaults), ``TEST.SEED`` (seed of the
    initial boxes) and ``TEST.DETECTIONS_PER_IMAGE``.
    """

    def __init__(self, cfg):
        super().__init__()
        c = cfg.MODEL.IDIP
        self.num_classes = c.NUM_CLASSES
        self.num_proposals = c.NUM_PROPOSALS
        self.in_features = list(c.IN_FEATURES)
        if c.NUM_DYNAMIC != 2:
            raise ConfigError(f"config key 'MODEL.IDIP.NUM_DYNAMIC' must be 2 (got {c.NUM_DYNAMIC})")
        if self.num_proposals < 1:
            raise ConfigError(f"config key 'MODEL.IDIP.NUM_PROPOSALS' must be >= 1 (got {self.num_proposals})")
        if c.NUM_PROPOSALS_TEST < 0:
            raise ConfigError(
                f"config key 'MODEL.IDIP.NUM_PROPOSALS_TEST' must be >= 0 (0: NUM_PROPOSALS; got {c.NUM_PROPOSALS_TEST})"
            )
        self.num_proposals_test = c.NUM_PROPOSALS_TEST or self.num_proposals
        self.ops = select_ops(cfg.MODEL.USE_REFERENCE_OPS)

        self.backbone = build_backbone(cfg)
        shapes = self.backbone.output_shape()
        missing = [f for f in self.in_features if f not in shapes]
        if missing:
            raise ConfigError(
                f"config key 'MODEL.IDIP.IN_FEATURES' names {missing}, which the backbone does not "
                f"produce (it gives {sorted(shapes)})"
            )
        channels = {shapes[f][0] for f in self.in_features}
        if channels != {c.HIDDEN_DIM}:
            raise ConfigError(
                f"config key 'MODEL.IDIP.HIDDEN_DIM' ({c.HIDDEN_DIM}) must equal the FPN channels {sorted(channels)}"
            )
        strides = [shapes[f][1] for f in self.in_features]
        self.size_divisibility = max(getattr(self.backbone, "size_divisibility", 0), cfg.INPUT.SIZE_DIVISIBILITY)

        self.head = IDIPHead(
            self.num_classes,
            strides,
            self.ops,
            dim=c.HIDDEN_DIM,
            num_stages=c.NUM_HEADS,
            num_attn_heads=c.NHEADS,
            dim_feedforward=c.DIM_FEEDFORWARD,
            dim_dynamic=c.DIM_DYNAMIC,
            pooler_resolution=c.POOLER_RESOLUTION,
            sampling_ratio=c.SAMPLING_RATIO,
            dropout=c.DROPOUT,
            prior_prob=c.PRIOR_PROB,
            num_cls_layers=c.NUM_CLS,
            num_reg_layers=c.NUM_REG,
        )
        self.mask_head = MaskHead(
            self.num_classes,
            strides,
            self.ops,
            dim=c.HIDDEN_DIM,
            dim_dynamic=c.DIM_DYNAMIC,
            pooler_resolution=c.MASK_POOLER_RESOLUTION,
            sampling_ratio=c.MASK_SAMPLING_RATIO,
            num_convs=c.MASK_NUM_CONVS,
            with_dynamic=c.MASK_WITH_DYNAMIC,
            norm=c.MASK_NORM,
            norm_per_image=c.MASK_NORM_PER_IMAGE,
        )
        init_prior_bias([self.head, self.mask_head], self.num_classes, c.PRIOR_PROB,
                        by_shape=c.PRIOR_INIT_BY_SHAPE)
        matcher = SimOTAMatcher(
            cls_weight=c.CLASS_WEIGHT,
            l1_weight=c.L1_WEIGHT,
            giou_weight=c.GIOU_WEIGHT,
            focal_alpha=c.ALPHA,
            focal_gamma=c.GAMMA,
            center_radius=c.OTA_CENTER_RADIUS,
            candidate_topk=c.OTA_CANDIDATE_TOPK,
        )
        self.criterion = IDIPCriterion(
            matcher,
            self.ops,
            cls_weight=c.CLASS_WEIGHT,
            l1_weight=c.L1_WEIGHT,
            giou_weight=c.GIOU_WEIGHT,
            mask_weight=c.MASK_WEIGHT,
            focal_alpha=c.ALPHA,
            focal_gamma=c.GAMMA,
        )
        self.schedule = DiffusionSchedule(c.NUM_TIMESTEPS)
        self.use_reference_ops = bool(cfg.MODEL.USE_REFERENCE_OPS)
        self.sample_steps = c.SAMPLE_STEP
        self.eta = c.ETA
        self.box_renewal = c.BOX_RENEWAL
        self.renewal_threshold = c.RENEWAL_THRESHOLD
        self.nms_thresh = c.NMS_THRESH
        self.score_thresh = c.SCORE_THRESH_TEST
        self.mask_threshold = c.MASK_THRESHOLD
        self.mask_from_unclipped_boxes = c.MASK_FROM_UNCLIPPED_BOXES
        self.test_seed = cfg.TEST.SEED
        self.detections_per_image = cfg.TEST.DETECTIONS_PER_IMAGE

        self.register_buffer("pixel_mean", torch.tensor(cfg.MODEL.PIXEL_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.MODEL.PIXEL_STD).view(3, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # -------------------------------------------------------------------------------------------
    # shared
    # -------------------------------------------------------------------------------------------
    def _images(self, batch: list[dict]) -> tuple[Tensor, Tensor, list[tuple[int, int]]]:
        """Normalised padded images [B, 3, Hp, Wp], [B, 4] (w, h, w, h), per-image (h, w)."""
        from ...data.batching import batch_images

        images = [(s["image"].to(self.device).float() - self.pixel_mean) / self.pixel_std for s in batch]
        tensor, sizes = batch_images(images, self.size_divisibility)
        image_size = torch.tensor([[w, h, w, h] for h, w in sizes], dtype=torch.float32, device=self.device)
        return tensor, image_size, sizes

    def _features(self, images: Tensor) -> list[Tensor]:
        out = self.backbone(images)
        return [out[f] for f in self.in_features]

    def forward(self, batch: list[dict]):
        """Training: dict of scalar losses. Eval: one result dict per image (see build_model)."""
        if not isinstance(batch, (list, tuple)):
            raise ValueError(f"IDIP expects a list of sample dicts, got {type(batch).__name__}")
        if len(batch) == 0:
            if not self.training:
                return []  # nothing to predict: an empty list of results, like any batch
            raise ValueError("IDIP got an empty training batch")
        if self.training:
            return self.losses(batch)
        return self.inference(batch)

    # -------------------------------------------------------------------------------------------
    # training
    # -------------------------------------------------------------------------------------------
    def losses(self, batch: list[dict]) -> dict[str, Tensor]:
        images, image_size, _ = self._images(batch)
        targets = []
        for i, s in enumerate(batch):
            if "instances" not in s:
                raise ValueError(f"training sample {i} (image_id {s.get('image_id')}) has no 'instances'")
            inst = s["instances"]
            targets.append(
                {
                    "boxes": inst["boxes"].to(self.device, torch.float32),
                    "classes": inst["classes"].to(self.device, torch.long),
                    "masks": inst["masks"].to(self.device),
                }
            )
        features = self._features(images)
        diffused = prepare_diffusion_targets(
            [t["boxes"] for t in targets],
            image_size,
            self.num_proposals,
            self.schedule,
            use_reference_ops=self.use_reference_ops,
        )
        outputs = self.head(features, diffused["boxes"], diffused["t"])
        return self.criterion(
            outputs, targets, image_size, lambda rois, feats: self.mask_head(features, rois, feats)
        )

    # -------------------------------------------------------------------------------------------
    # inference
    # -------------------------------------------------------------------------------------------
    def _generators(self, batch: list[dict]) -> list[torch.Generator]:
        """One generator per image, seeded from TEST.SEED and the image id, so that an image's
        result does not depend on the batch it is in."""
        gens = []
        for i, s in enumerate(batch):
            image_id = int(s.get("image_id", i))
            g = torch.Generator(device=self.device)
            g.manual_seed((self.test_seed * _SEED_STRIDE + image_id) % (2**63))
            gens.append(g)
        return gens

    @torch.no_grad()
    def inference(self, batch: list[dict]) -> list[dict[str, Tensor]]:
        images, image_size, sizes = self._images(batch)
        features = self._features(images)

        def denoise(boxes: Tensor, t: Tensor):
            last = self.head(features, boxes, t)[-1]
            return last["logits"], last["boxes"], last["proposal_feat"]

        sampler = DDIMSampler(
            self.schedule,
            num_steps=self.sample_steps,
            eta=self.eta,
            box_renewal=self.box_renewal,
            renewal_threshold=self.renewal_threshold,
            use_reference_ops=self.use_reference_ops,
        )
        logits, boxes, feats = sampler.sample(
            denoise, image_size, self.num_proposals_test, self._generators(batch)
        )
        return self.postprocess(features, logits, boxes, feats, batch, sizes)

    def postprocess(
        self,
        features: list[Tensor],
        logits: Tensor,
        boxes: Tensor,
        feats: Tensor,
        batch: list[dict],
        sizes: list[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        """Top-k, class-aware NMS, masks and rescaling to the original image size.

        Args:
            features: FPN maps (for the mask head).
            logits: [B, N, C] final class logits.
            boxes: [B, N, 4] final absolute xyxy boxes (input image coordinates).
            feats: [B, N, D] final proposal features.
            batch: the input samples (``height``, ``width``: original size).
            sizes: (h, w) of each resized, unpadded input image.
        """
        b, n, c = logits.shape
        scores_all = logits.float().sigmoid().flatten(1)  # [B, N*C], index = proposal * C + class
        k = min(self.num_proposals_test, n * c)
        kept = []
        for i in range(b):
            h, w = sizes[i]
            scores, idx = scores_all[i].topk(k)
            above = scores > self.score_thresh
            scores, idx = scores[above], idx[above]
            prop = idx // c
            labels = idx % c
            keep = self.ops.batched_nms(boxes[i, prop].float(), scores, labels, self.nms_thresh)
            keep = keep[: self.detections_per_image]
            raw = boxes[i, prop[keep]]
            # After NMS, as detectron2's detector_postprocess in the authors' code: clip to the
            # image, then drop the boxes left without width or height.
            bx = clip_boxes(raw, h, w)
            nonempty = (bx[:, 2] > bx[:, 0]) & (bx[:, 3] > bx[:, 1])
            keep = keep[nonempty]
            mask_boxes = raw[nonempty] if self.mask_from_unclipped_boxes else bx[nonempty]
            kept.append((bx[nonempty], scores[keep], labels[keep], feats[i, prop[keep]], mask_boxes))

        rois = torch.cat(
            [torch.cat([torch.full_like(k_[4][:, :1], float(i)), k_[4]], dim=1) for i, k_ in enumerate(kept)]
        )
        all_feats = torch.cat([k_[3] for k_ in kept])
        mask_probs = self.mask_head(features, rois, all_feats).sigmoid() if rois.shape[0] else None

        results = []
        start = 0
        for i, (bx, scores, labels, _, _) in enumerate(kept):
            num = bx.shape[0]
            h, w = sizes[i]
            out_h = int(batch[i].get("height", h))
            out_w = int(batch[i].get("width", w))
            scale = torch.tensor([out_w / w, out_h / h, out_w / w, out_h / h], device=bx.device)
            out_boxes = bx * scale
            if num:
                probs = mask_probs[start : start + num]
                probs = probs[torch.arange(num, device=probs.device), labels]
                masks = paste_masks_in_image(probs, out_boxes, out_h, out_w, self.mask_threshold)
            else:
                masks = torch.zeros((0, out_h, out_w), dtype=torch.bool, device=bx.device)
            start += num
            results.append({"boxes": out_boxes, "scores": scores, "labels": labels.long(), "masks": masks})
        return results
