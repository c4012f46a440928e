"""The IDIP meta-architecture: ResNet-FPN, diffusion box denoising head, RoI mask head."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...config import ConfigError
from ..backbone import build_backbone
from ..box_ops import clip_boxes
from ..build import register_meta_arch
from ..image_batching import batch_images
from ..mask_paste import paste_masks_in_image
from ..op_library import op_library
from ..poolers import box_lists_to_rois
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

    num_classes_key = "MODEL.IDIP.NUM_CLASSES"  # the config key of num_classes (engine checks)

    def __init__(
        self,
        *,
        backbone: nn.Module,
        in_features: list[str],
        head: IDIPHead,
        mask_head: MaskHead,
        criterion: IDIPCriterion,
        schedule: DiffusionSchedule,
        sampler: DDIMSampler,
        num_classes: int,
        num_proposals: int,
        num_proposals_test: int,
        size_divisibility: int,
        pixel_mean: list[float],
        pixel_std: list[float],
        nms_thresh: float,
        score_thresh: float,
        mask_threshold: float,
        mask_from_unclipped_boxes: bool,
        detections_per_image: int,
        test_seed: int,
        use_reference_ops: bool = False,
    ):
        """Use :meth:`from_config` for the arguments a config gives (``build_model`` does)."""
        super().__init__()
        self.backbone = backbone
        self.in_features = list(in_features)
        self.head = head
        self.mask_head = mask_head
        self.criterion = criterion
        self.schedule = schedule
        self.sampler = sampler
        self.num_classes = num_classes
        self.num_proposals = num_proposals
        self.num_proposals_test = num_proposals_test
        self.size_divisibility = size_divisibility
        self.nms_thresh = nms_thresh
        self.score_thresh = score_thresh
        self.mask_threshold = mask_threshold
        self.mask_from_unclipped_boxes = mask_from_unclipped_boxes
        self.detections_per_image = detections_per_image
        self.test_seed = test_seed
        self.use_reference_ops = bool(use_reference_ops)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(3, 1, 1), persistent=False)

    @classmethod
    def from_config(cls, cfg) -> dict:
        """The constructor's arguments from ``MODEL.*``, ``INPUT.SIZE_DIVISIBILITY``,
        ``TEST.SEED`` and ``TEST.DETECTIONS_PER_IMAGE``; every value checked."""
        c = cfg.MODEL.IDIP
        if c.NUM_PROPOSALS < 1:
            raise ConfigError(
                f"config key 'MODEL.IDIP.NUM_PROPOSALS' must be >= 1 (got {c.NUM_PROPOSALS})"
            )
        if c.NUM_PROPOSALS_TEST < 0:
            raise ConfigError(
                "config key 'MODEL.IDIP.NUM_PROPOSALS_TEST' must be >= 0 (0: NUM_PROPOSALS; "
                f"got {c.NUM_PROPOSALS_TEST})"
            )
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        in_features = list(c.IN_FEATURES)
        missing = [f for f in in_features if f not in shapes]
        if missing:
            raise ConfigError(
                f"config key 'MODEL.IDIP.IN_FEATURES' names {missing}, which the backbone does not "
                f"produce (it gives {sorted(shapes)})"
            )
        channels = {shapes[f][0] for f in in_features}
        if channels != {c.HIDDEN_DIM}:
            raise ConfigError(
                f"config key 'MODEL.IDIP.HIDDEN_DIM' ({c.HIDDEN_DIM}) must equal the FPN channels "
                f"{sorted(channels)}"
            )
        strides = [shapes[f][1] for f in in_features]
        reference = bool(cfg.MODEL.USE_REFERENCE_OPS)
        head = IDIPHead(
            c.NUM_CLASSES,
            strides,
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
            use_reference_ops=reference,
        )
        mask_head = MaskHead(
            c.NUM_CLASSES,
            strides,
            dim=c.HIDDEN_DIM,
            dim_dynamic=c.DIM_DYNAMIC,
            pooler_resolution=c.MASK_POOLER_RESOLUTION,
            sampling_ratio=c.MASK_SAMPLING_RATIO,
            num_convs=c.MASK_NUM_CONVS,
            with_dynamic=c.MASK_WITH_DYNAMIC,
            norm=c.MASK_NORM,
            norm_per_image=c.MASK_NORM_PER_IMAGE,
            use_reference_ops=reference,
        )
        init_prior_bias(
            [head, mask_head], c.NUM_CLASSES, c.PRIOR_PROB, by_shape=c.PRIOR_INIT_BY_SHAPE
        )
        matcher = SimOTAMatcher(
            cls_weight=c.CLASS_WEIGHT,
            l1_weight=c.L1_WEIGHT,
            giou_weight=c.GIOU_WEIGHT,
            focal_alpha=c.ALPHA,
            focal_gamma=c.GAMMA,
            center_radius=c.OTA_CENTER_RADIUS,
            candidate_topk=c.OTA_CANDIDATE_TOPK,
        )
        criterion = IDIPCriterion(
            matcher,
            cls_weight=c.CLASS_WEIGHT,
            l1_weight=c.L1_WEIGHT,
            giou_weight=c.GIOU_WEIGHT,
            mask_weight=c.MASK_WEIGHT,
            focal_alpha=c.ALPHA,
            focal_gamma=c.GAMMA,
            use_reference_ops=reference,
        )
        schedule = DiffusionSchedule(c.NUM_TIMESTEPS)
        try:
            sampler = DDIMSampler(
                schedule,
                num_steps=c.SAMPLE_STEP,
                eta=c.ETA,
                box_renewal=c.BOX_RENEWAL,
                renewal_threshold=c.RENEWAL_THRESHOLD,
                use_reference_ops=reference,
            )
        except ValueError as err:
            raise ConfigError(
                f"config keys 'MODEL.IDIP.SAMPLE_STEP' / 'MODEL.IDIP.ETA': {err}"
            ) from None
        return dict(
            backbone=backbone,
            in_features=in_features,
            head=head,
            mask_head=mask_head,
            criterion=criterion,
            schedule=schedule,
            sampler=sampler,
            num_classes=c.NUM_CLASSES,
            num_proposals=c.NUM_PROPOSALS,
            num_proposals_test=c.NUM_PROPOSALS_TEST or c.NUM_PROPOSALS,
            size_divisibility=max(
                getattr(backbone, "size_divisibility", 0), cfg.INPUT.SIZE_DIVISIBILITY
            ),
            pixel_mean=list(cfg.MODEL.PIXEL_MEAN),
            pixel_std=list(cfg.MODEL.PIXEL_STD),
            nms_thresh=c.NMS_THRESH,
            score_thresh=c.SCORE_THRESH_TEST,
            mask_threshold=c.MASK_THRESHOLD,
            mask_from_unclipped_boxes=c.MASK_FROM_UNCLIPPED_BOXES,
            detections_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
            test_seed=cfg.TEST.SEED,
            use_reference_ops=reference,
        )

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # -------------------------------------------------------------------------------------------
    # shared
    # -------------------------------------------------------------------------------------------
    def _images(self, batch: list[dict]) -> tuple[Tensor, Tensor, list[tuple[int, int]]]:
        """Normalised padded images [B, 3, Hp, Wp], [B, 4] (w, h, w, h), per-image (h, w)."""
        images = [
            (s["image"].to(self.device).float() - self.pixel_mean) / self.pixel_std for s in batch
        ]
        tensor, sizes = batch_images(images, self.size_divisibility)
        image_size = torch.tensor(
            [[w, h, w, h] for h, w in sizes], dtype=torch.float32, device=self.device
        )
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
                raise ValueError(
                    f"training sample {i} (image_id {s.get('image_id')}) has no 'instances'"
                )
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
    @torch.compiler.disable  # generators are objects torch.compile cannot trace
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

        logits, boxes, feats = self.sampler.sample(
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
            keep = op_library(self.use_reference_ops).batched_nms(
                boxes[i, prop].float(), scores, labels, self.nms_thresh
            )
            keep = keep[: self.detections_per_image]
            raw = boxes[i, prop[keep]]
            # After NMS, as detectron2's detector_postprocess in the authors' code: clip to the
            # image, then drop the boxes left without width or height.
            bx = clip_boxes(raw, h, w)
            nonempty = (bx[:, 2] > bx[:, 0]) & (bx[:, 3] > bx[:, 1])
            keep = keep[nonempty]
            mask_boxes = raw[nonempty] if self.mask_from_unclipped_boxes else bx[nonempty]
            kept.append(
                (bx[nonempty], scores[keep], labels[keep], feats[i, prop[keep]], mask_boxes)
            )

        rois = box_lists_to_rois([k_[4] for k_ in kept])
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
            results.append(
                {"boxes": out_boxes, "scores": scores, "labels": labels.long(), "masks": masks}
            )
        return results
