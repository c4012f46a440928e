#!/usr/bin/env python
"""Export CondInst or IDIP inference as a torch.export program or an ONNX file.

    python tools/export.py --config-file configs/shapes/CondInst_R18.yaml --format torch_export \
        --output out/condinst.pt2 MODEL.WEIGHTS output/model_final.pth
    python tools/export.py --config-file configs/shapes/IDIP_R18.yaml --format onnx \
        --output out/idip.onnx --height 320 --width 480 MODEL.WEIGHTS output/model_final.pth

The program takes one image of the exported size, [1, 3, H, W] float32 RGB in 0..255 (and for
IDIP a seed, int64 [1]), and returns boxes [D, 4], scores [D], labels [D] int64, masks
[D, H, W] bool and valid [D] bool; the valid rows come first (README, section "Export").
``--format torch_export`` writes ``torch.export.save``'s file, whose ``example_inputs`` run it
(load with ``torch.export.load`` after ``import idip.ops``); ``--format onnx`` writes one .onnx
file of standard operators (opset 18). After writing, the file is run on the example inputs and
compared with the eager wrapper (onnxruntime for ONNX, when it is installed).

Config overrides are KEY VALUE pairs, after --opts or bare.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
from typing import Sequence

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from idip.config import ConfigError, setup_cfg  # noqa: E402
from idip.engine.checkpoint import load_weights  # noqa: E402
from idip.engine.cli import add_config_arguments, parse_config_args, run_cli  # noqa: E402
from idip.engine.logger import setup_logger  # noqa: E402
from idip.modeling import build_model  # noqa: E402
from idip.modeling.export import (  # noqa: E402
    example_inputs,
    export_onnx,
    export_program,
    export_wrapper,
    input_names,
)

FORMATS = ("torch_export", "onnx")
logger = logging.getLogger("idip.export")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_arguments(parser)
    parser.add_argument("--format", required=True, choices=FORMATS, help="what to write")
    parser.add_argument("--output", required=True, help="the file to write (.pt2 / .onnx)")
    parser.add_argument(
        "--height", type=int, default=0, help="image height exported (default INPUT.MIN_SIZE_TEST)"
    )
    parser.add_argument(
        "--width", type=int, default=0, help="image width exported (default INPUT.MAX_SIZE_TEST)"
    )
    parser.add_argument(
        "--num-detections",
        type=int,
        default=0,
        help="D, rows of the outputs (default: MODEL.FCOS.POST_NMS_TOPK_TEST for CondInst, "
        "TEST.DETECTIONS_PER_IMAGE for IDIP)",
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="IDIP: the example input's seed (default TEST.SEED)"
    )
    parser.add_argument(
        "--strict", action="store_true", help="torch.export in strict mode (default non-strict)"
    )
    parser.add_argument(
        "--no-check", action="store_true", help="do not run the written file on the example inputs"
    )
    return parse_config_args(parser, argv)


def image_size(args: argparse.Namespace, cfg) -> tuple[int, int]:
    """(H, W) of the exported image: the options, else INPUT.MIN_SIZE_TEST x MAX_SIZE_TEST."""
    height = args.height or int(cfg.INPUT.MIN_SIZE_TEST)
    width = args.width or int(cfg.INPUT.MAX_SIZE_TEST)
    if args.height < 0 or args.width < 0 or height < 1 or width < 1:
        raise ConfigError(
            f"the exported image size must be positive (got {height}x{width}): give --height and "
            "--width (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST are their defaults)"
        )
    return height, width


def check(args: argparse.Namespace, wrapper, inputs: tuple) -> None:
    """Runs the written file on ``inputs`` and logs how far it is from the eager wrapper."""
    if args.format == "onnx":
        if importlib.util.find_spec("onnxruntime") is None:
            logger.info("onnxruntime is not installed: the ONNX file was not run")
            return
        import onnxruntime

        session = onnxruntime.InferenceSession(args.output, providers=["CPUExecutionProvider"])
        feed = {name: x.cpu().numpy() for name, x in zip(input_names(wrapper), inputs)}
        outputs = [torch.from_numpy(o) for o in session.run(None, feed)]
    else:
        outputs = torch.export.load(args.output).module()(*inputs)
    with torch.no_grad():
        eager = wrapper(*inputs)
    diff = (outputs[0].cpu() - eager[0].cpu()).abs().max().item()
    same = bool(torch.equal(outputs[4].cpu(), eager[4].cpu()))
    logger.info(
        "checked on the example inputs: %d valid detection(s) (eager %d, %s rows), box "
        "difference to eager at most %.3g pixels",
        int(outputs[4].sum()),
        int(eager[4].sum()),
        "same" if same else "different",
        diff,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = setup_cfg(args.config_file or None, args.opts)
    setup_logger(None)
    height, width = image_size(args, cfg)
    if args.num_detections < 0:
        raise ConfigError(f"--num-detections must be >= 1, got {args.num_detections}")
    if args.format == "onnx":
        missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
        if missing:
            raise ConfigError(
                f"--format onnx needs the packages {' and '.join(missing)} "
                "(pip install -r requirements-dev.txt)"
            )
    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        logger.info(load_weights(model, cfg.MODEL.WEIGHTS, cfg.MODEL.META_ARCHITECTURE, cfg=cfg))
    else:
        logger.info("MODEL.WEIGHTS is empty: exporting randomly initialised weights")
    try:
        wrapper = export_wrapper(model, args.num_detections or None)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    seed = int(cfg.TEST.SEED if args.seed is None else args.seed)
    inputs = example_inputs(wrapper, height, width, seed)
    folder = os.path.dirname(os.path.abspath(args.output))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--output '{args.output}' cannot be created: {err.strerror}") from None
    program = export_program(wrapper, inputs, strict=args.strict)
    if args.format == "torch_export":
        torch.export.save(program, args.output)
    else:
        export_onnx(program, args.output, input_names(wrapper))
    logger.info(
        "%s %s (%dx%d image, %d detections) -> %s",
        cfg.MODEL.META_ARCHITECTURE,
        args.format,
        height,
        width,
        wrapper.num_detections,
        args.output,
    )
    if not args.no_check:
        check(args, wrapper, inputs)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
