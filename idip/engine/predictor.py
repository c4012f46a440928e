"""Single-image inference for demos: resize like the test loader, run the model, return results."""

from __future__ import annotations

import logging

import numpy as np
import torch
from PIL import Image

from ..config import CfgNode, ConfigError
from ..modeling.build import build_model
from .checkpoint import load_weights

logger = logging.getLogger(__name__)


def test_resize_shape(height: int, width: int, short: int, max_size: int) -> tuple[int, int]:
    """(new_h, new_w) with the short side at ``short`` and the long side at most ``max_size``
    (detectron2's ResizeShortestEdge); ``short`` 0 keeps the size."""
    if short <= 0:
        return height, width
    scale = short / min(height, width)
    if max(height, width) * scale > max_size > 0:
        scale = max_size / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


class Predictor:
    """Builds ``MODEL.META_ARCHITECTURE``, loads ``MODEL.WEIGHTS`` and predicts one image at a time.

    ``predictor(image)`` takes a uint8 RGB [H,W,3] array and returns the model's result for it:
    ``boxes`` [K,4], ``scores`` [K], ``labels`` [K], ``masks`` [K,H,W] in the image's coordinates.
    """

    def __init__(self, cfg: CfgNode):
        if not cfg.MODEL.WEIGHTS:
            raise ConfigError("config key 'MODEL.WEIGHTS' is empty; give the checkpoint to run (MODEL.WEIGHTS path)")
        self.cfg = cfg
        self.model = build_model(cfg)
        logger.info(load_weights(self.model, cfg.MODEL.WEIGHTS, cfg.MODEL.META_ARCHITECTURE))
        self.model.eval()
        torch.manual_seed(cfg.TEST.SEED)

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> dict:
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be uint8 [H,W,3] RGB, got {image.dtype} {image.shape}")
        height, width = image.shape[:2]
        new_h, new_w = test_resize_shape(height, width, self.cfg.INPUT.MIN_SIZE_TEST, self.cfg.INPUT.MAX_SIZE_TEST)
        if (new_h, new_w) != (height, width):
            image = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        sample = {"image": tensor, "height": height, "width": width, "image_id": 0, "file_name": ""}
        return self.model([sample])[0]
