"""Single-image inference for demos: resize like the test loader, run the model, return results."""

from __future__ import annotations

import logging
import random

import numpy as np
import torch

from ..config import CfgNode, ConfigError
from ..data.transforms import ResizeFlipAugmentation
from ..modeling.build import build_model
from .checkpoint import load_weights

logger = logging.getLogger(__name__)


class Predictor:
    """Builds ``MODEL.META_ARCHITECTURE``, loads ``MODEL.WEIGHTS`` and predicts one image at a time.

    ``predictor(image)`` takes a uint8 RGB [H,W,3] array and returns the model's result for it:
    ``boxes`` [K,4], ``scores`` [K], ``labels`` [K], ``masks`` [K,H,W] in the image's coordinates.
    Images are resized exactly as the test loader does (``INPUT.MIN_SIZE_TEST/MAX_SIZE_TEST``).
    """

    def __init__(self, cfg: CfgNode):
        if not cfg.MODEL.WEIGHTS:
            raise ConfigError(
                "config key 'MODEL.WEIGHTS' is empty; give the checkpoint to run (MODEL.WEIGHTS path)"
            )
        self.cfg = cfg
        self.resize = ResizeFlipAugmentation.from_config(cfg, is_train=False)
        self.model = build_model(cfg)
        logger.info(
            load_weights(self.model, cfg.MODEL.WEIGHTS, cfg.MODEL.META_ARCHITECTURE, cfg=cfg)
        )
        self.model.eval()
        torch.manual_seed(cfg.TEST.SEED)

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> dict:
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be uint8 [H,W,3] RGB, got {image.dtype} {image.shape}")
        height, width = image.shape[:2]
        resized = self.resize.sample(height, width, random.Random(0)).apply_image(image)
        tensor = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        sample = {"image": tensor, "height": height, "width": width, "image_id": 0, "file_name": ""}
        return self.model([sample])[0]
