#!/usr/bin/env python
"""Train IDIP or CondInst.

    python train.py --config-file configs/shapes/IDIP_R18.yaml [KEY VALUE ...]
    python train.py --config-file configs/shapes/IDIP_R18.yaml --opts SOLVER.MAX_ITER 100
    torchrun --nproc_per_node=8 train.py --config-file configs/IDIP_R50.yaml [--resume] [KEY VALUE ...]

Config overrides are KEY VALUE pairs, bare or after ``--opts`` (both may be mixed; they are
applied in command-line order, after the config file). Checkpoints, log.txt, metrics.json,
tensorboard events and config.yaml go to OUTPUT_DIR.
``--resume`` continues from OUTPUT_DIR/last_checkpoint; workers restarted by torchrun
(``--max-restarts``) always do. An OUTPUT_DIR that holds a previous run is refused without
``--resume`` or ``--start-over``, and one in use by another run is refused.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from idip.config import ConfigError, setup_cfg
from idip.engine.cli import add_config_arguments, parse_config_args, run_cli
from idip.engine.trainer import Trainer


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUTPUT_DIR/last_checkpoint when it exists",
    )
    parser.add_argument(
        "--start-over",
        action="store_true",
        help="train from scratch in an OUTPUT_DIR that holds a previous run (its files are moved "
        "to OUTPUT_DIR/replaced_run_<time>/); without it, such a folder is refused",
    )
    parser.add_argument(
        "--allow-config-change",
        action="store_true",
        help="with --resume: continue even when the config changed in a way that makes the result "
        "differ from an uninterrupted run (model, data, batch, optimizer, seed)",
    )
    add_config_arguments(parser)
    return parse_config_args(parser, argv)


def main(argv: Sequence[str] | None = None, trainer_cls: type[Trainer] = Trainer) -> int:
    args = parse_args(argv)
    if args.resume and args.start_over:
        raise ConfigError("--resume and --start-over exclude each other")
    cfg = setup_cfg(args.config_file or None, args.opts)
    trainer = trainer_cls(
        cfg,
        resume=args.resume,
        start_over=args.start_over,
        allow_config_change=args.allow_config_change,
    )
    trainer.train()
    return 0


def cli(argv: Sequence[str] | None = None, trainer_cls: type[Trainer] = Trainer) -> int:
    return run_cli(lambda a: main(a, trainer_cls), argv)


if __name__ == "__main__":
    sys.exit(cli())
