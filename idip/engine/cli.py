"""Argument parsing and error handling shared by the command-line tools."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

from ..config import ConfigError
from .checkpoint import CheckpointError
from .distributed import destroy_distributed

# User errors: a bad config, a missing or unfitting weights file, a missing dataset file.
# One line, exit code 2.
USER_ERRORS = (ConfigError, CheckpointError, FileNotFoundError)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-file", default="", metavar="FILE", help="YAML config file")
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        help="config overrides as KEY VALUE pairs, e.g. SOLVER.BASE_LR 0.01 OUTPUT_DIR out/run1",
    )


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Runs ``main(argv)``; user errors print ``error: ...`` (exit 2), a non-finite loss or other
    training failure prints ``error: ...`` (exit 1). The process group is always left."""
    try:
        return int(main(argv) or 0)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    except FloatingPointError as err:
        logging.getLogger("idip").error("%s", err)
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 1
    finally:
        destroy_distributed()
