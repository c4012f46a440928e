#!/usr/bin/env python
"""Evaluate a checkpoint on DATASETS.TEST (COCO bbox and segm AP).

    python eval.py --config-file configs/shapes/IDIP_R18.yaml MODEL.WEIGHTS output/model_final.pth
    torchrun --nproc_per_node=8 eval.py --config-file configs/IDIP_R50.yaml MODEL.WEIGHTS model.pth
    python eval.py --config-file configs/shapes/IDIP_R18.yaml --opts MODEL.WEIGHTS model.pth

Config overrides are KEY VALUE pairs, bare or after ``--opts``, applied in command-line order.

Prints one AP table per dataset; predictions and results go to OUTPUT_DIR/inference/<dataset>/.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Sequence

from idip.config import ConfigError, setup_cfg
from idip.engine.checkpoint import load_weights
from idip.engine.cli import add_config_arguments, parse_config_args, run_cli
from idip.engine.evaluate import evaluate_datasets
from idip.engine.logger import setup_logger
from idip.engine.runtime import configure_torch
from idip.evaluation import format_ap_table
from idip.modeling.build import build_model, resolve_device
from idip.utils.distributed import get_rank, init_distributed, is_main_process

logger = logging.getLogger("idip.eval")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_arguments(parser)
    return parse_config_args(parser, argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = setup_cfg(args.config_file or None, args.opts)
    device = resolve_device(cfg)
    init_distributed(device.type)
    setup_logger(cfg.OUTPUT_DIR, get_rank())
    configure_torch(cfg)
    if not cfg.MODEL.WEIGHTS:
        raise ConfigError(
            "config key 'MODEL.WEIGHTS' is empty; give the checkpoint to evaluate (MODEL.WEIGHTS path)"
        )
    if not cfg.DATASETS.TEST:
        raise ConfigError("config key 'DATASETS.TEST' is empty; name the dataset(s) to evaluate on")
    model = build_model(cfg)
    logger.info(load_weights(model, cfg.MODEL.WEIGHTS, cfg.MODEL.META_ARCHITECTURE, cfg=cfg))
    results = evaluate_datasets(cfg, model, log_tables=False)
    if is_main_process():
        for name, tasks in results.items():
            print(f"\n{name}:\n{format_ap_table(tasks or {})}")
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
