"""Evaluation of a model on every dataset of ``DATASETS.TEST`` (COCO bbox + segm AP)."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn

from ..data import build_test_loader
from ..evaluation import COCOEvaluator, format_ap_table, inference_on_dataset
from ..utils.distributed import is_main_process
from .checkpoint import unwrap_model
from .runtime import check_num_classes
from .seeding import capture_rng_state, restore_rng_state

logger = logging.getLogger(__name__)


def evaluate_datasets(cfg, model: nn.Module, log_tables: bool = True) -> dict[str, Any]:
    """Runs ``inference_on_dataset`` + ``COCOEvaluator`` on each of ``cfg.DATASETS.TEST``.

    The model is evaluated in eval mode (and put back in its previous mode), without DDP, and the
    global random-number generators are restored afterwards so that evaluating during training
    does not change the training that follows.

    Args:
        cfg: the config (DATASETS.TEST, OUTPUT_DIR, test loader keys).
        model: the model, possibly DDP-wrapped.
        log_tables: log an AP table per dataset on rank 0.

    Returns:
        ``{dataset_name: {"bbox": {"AP": ...}, "segm": {...}}}`` (AP in percent); empty when
        ``DATASETS.TEST`` is empty. Every rank returns the same keys; the numbers are valid on
        rank 0.
    """
    if not cfg.DATASETS.TEST:
        return {}
    net = unwrap_model(model)
    check_num_classes(net, cfg, list(cfg.DATASETS.TEST))
    was_training = net.training
    rng = capture_rng_state()
    results: dict[str, Any] = {}
    try:
        net.eval()
        for name in cfg.DATASETS.TEST:
            loader = build_test_loader(cfg, name)
            out_dir = os.path.join(cfg.OUTPUT_DIR, "inference", name)
            evaluator = COCOEvaluator(name, output_dir=out_dir, distributed=True)
            with torch.no_grad():
                results[name] = inference_on_dataset(net, loader, evaluator)
            if log_tables and is_main_process():
                logger.info("evaluation on %s:\n%s", name, format_ap_table(results[name] or {}))
    finally:
        net.train(was_training)
        restore_rng_state(rng)
    return results
