"""COCO evaluation (pycocotools bbox + segm, gathered over ranks) and the inference loop."""

from .coco_evaluation import COCOEvaluator, format_ap_table
from .inference import inference_on_dataset

__all__ = ["COCOEvaluator", "format_ap_table", "inference_on_dataset"]
