"""COCO evaluation (pycocotools bbox + segm, gathered over ranks) and the inference loop."""

from .coco_evaluation import COCOEvaluator
from .inference import inference_on_dataset

__all__ = ["COCOEvaluator", "inference_on_dataset"]
