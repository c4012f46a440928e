"""Argument parsing and error handling shared by the command-line tools."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

from ..config import ConfigError
from ..data.datasets import UnknownDatasetError
from ..data.errors import DatasetError
from ..data.image_io import ImageReadError, TooManyUnreadableImagesError
from ..utils.checkpoint_file import CheckpointError
from ..utils.distributed import destroy_distributed, synchronize

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


def run_cli(
    main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None
) -> int:
    """Runs ``main(argv)``; user errors print ``error: ...`` (exit 2), a non-finite loss or other
    training failure prints ``error: ...`` (exit 1). The process group is always left.

    Bad input data counts as a user error: an unknown dataset name, an unreadable image in
    evaluation, or more unreadable training images than DATALOADER.MAX_BAD_IMAGE_FRACTION allows
    (each message names the dataset or the files).
    """
    data_errors = (UnknownDatasetError, DatasetError, ImageReadError, TooManyUnreadableImagesError)
    try:
        code = int(main(argv) or 0)
        # Every rank reaches the end before any leaves the group: a rank that tears its gloo
        # group down while a peer is still in its last collective can abort the peer at exit
        # ("terminate called without an active exception", seen once in CI).
        synchronize()
        return code
    except USER_ERRORS + data_errors as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    except FloatingPointError as err:
        logging.getLogger("idip").error("%s", err)
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 1
    finally:
        destroy_distributed()
