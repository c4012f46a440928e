#!/usr/bin/env python
"""Draw a trained model's predictions (masks, boxes, class names, scores) on images.

    python demo.py --config-file configs/shapes/IDIP_R18.yaml --input img.png --output out.png \
        --opts MODEL.WEIGHTS output/model_final.pth
    python demo.py --config-file CFG --input 'images/*.jpg' --output vis/ --confidence-threshold 0.3 \
        MODEL.WEIGHTS model.pth

--input takes files, folders and glob patterns; --output is a folder (one PNG per input, named
after it), or a .png file when there is exactly one input. Config overrides are KEY VALUE pairs,
after --opts or bare (a declared config key ends the --input list). Each instance is drawn in its
own colour (mask, box and label), so two objects of one class are told apart; labels stay inside
the image and are moved off each other.
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import sys
from typing import Sequence

from idip.config import ConfigError, setup_cfg
from idip.data.image_io import ImageReadError, read_image
from idip.engine.cli import add_config_arguments, parse_config_args, run_cli
from idip.engine.logger import setup_logger
from idip.engine.predictor import Predictor
from idip.utils.visualize import draw_instances

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
logger = logging.getLogger("idip.demo")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_arguments(parser)
    parser.add_argument(
        "--input", nargs="+", required=True, help="image files, folders or glob patterns"
    )
    parser.add_argument(
        "--output", required=True, help="output folder, or a .png file for one input"
    )
    parser.add_argument(
        "--confidence-threshold", type=float, default=0.5, help="minimum score drawn"
    )
    return parse_config_args(parser, argv)


def expand_inputs(patterns: Sequence[str]) -> list[str]:
    """Files named by paths, folders (their images) and glob patterns, in a stable order."""
    files: list[str] = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            files += sorted(
                os.path.join(pattern, f)
                for f in os.listdir(pattern)
                if f.lower().endswith(IMAGE_EXTENSIONS)
            )
        elif os.path.isfile(pattern):
            files.append(pattern)
        else:
            matches = sorted(glob.glob(os.path.expanduser(pattern)))
            if not matches:
                raise ConfigError(f"--input {pattern!r} matches no file")
            files += [m for m in matches if os.path.isfile(m)]
    if not files:
        raise ConfigError(f"--input {' '.join(patterns)} holds no image")
    return files


def class_names_of(cfg) -> list[str] | None:
    """thing_classes of the first test (else train) dataset, or None when it cannot be read."""
    names = list(cfg.DATASETS.TEST) or list(cfg.DATASETS.TRAIN)
    if not names:
        return None
    try:
        from idip.data.datasets import get_dataset, register_from_cfg

        register_from_cfg(cfg)
        return list(get_dataset(names[0]).thing_classes)
    except Exception as err:  # names are cosmetic: draw "class k" rather than fail
        logger.warning(
            "class names of %s unavailable (%s); labels are drawn as numbers", names[0], err
        )
        return None


def output_path(output: str, source: str, single: bool) -> str:
    if single and output.lower().endswith(".png"):
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        return output
    if os.path.exists(output) and not os.path.isdir(output):
        raise ConfigError(
            f"--output '{output}' is an existing file: give a folder for the drawings"
            + (" (or, for one input image, a .png file name)" if single else "")
        )
    try:
        os.makedirs(output, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--output '{output}' cannot be created: {err.strerror}") from None
    return os.path.join(output, os.path.splitext(os.path.basename(source))[0] + ".png")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not 0.0 <= args.confidence_threshold <= 1.0:
        raise ConfigError(
            f"--confidence-threshold must be in [0, 1], got {args.confidence_threshold}"
        )
    cfg = setup_cfg(args.config_file or None, args.opts)
    setup_logger(None)
    files = expand_inputs(args.input)
    predictor = Predictor(cfg)
    names = class_names_of(cfg)
    for path in files:
        try:  # the reader of training and evaluation: EXIF orientation, 16-bit, CMYK, alpha
            image = read_image(path)
        except ImageReadError as err:
            raise ConfigError(str(err)) from None
        predictions = predictor(image)
        drawn = draw_instances(image, predictions, names, score_threshold=args.confidence_threshold)
        target = output_path(args.output, path, single=len(files) == 1)
        drawn.save(target)
        kept = int((predictions["scores"] >= args.confidence_threshold).sum())
        logger.info(
            "%s: %d instance(s) above %.2f -> %s", path, kept, args.confidence_threshold, target
        )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
