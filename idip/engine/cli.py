"""Argument parsing and error handling shared by the command-line tools."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

from ..config import ConfigError, get_cfg
from ..data.datasets import UnknownDatasetError
from ..data.errors import DatasetError
from ..data.image_io import ImageReadError, TooManyUnreadableImagesError
from ..utils.checkpoint_file import CheckpointError
from ..utils.distributed import destroy_distributed, synchronize

# User errors: a bad config, a missing or unfitting weights file, a missing dataset file.
# One line, exit code 2.
USER_ERRORS = (ConfigError, CheckpointError, FileNotFoundError)


OPTS_FLAG = "--opts"


class _OverridesFollow(argparse.Action):
    """``--opts`` as a marker that takes no value of its own: the ``KEY VALUE`` words after it are
    left to :func:`parse_config_args`, which collects them with the bare ones in command-line order
    (a ``--opts`` that swallowed its words would lose their order relative to bare pairs)."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        pass


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds ``--config-file`` and ``--opts``; parse with :func:`parse_config_args`."""
    parser.add_argument("--config-file", default="", metavar="FILE", help="YAML config file")
    parser.add_argument(
        OPTS_FLAG,
        action=_OverridesFollow,
        default=argparse.SUPPRESS,
        help="config overrides follow: --opts KEY VALUE [KEY VALUE ...], e.g. SOLVER.BASE_LR 0.01 "
        "OUTPUT_DIR out/run1; the pairs may also be given without --opts, and all are applied in "
        "command-line order",
    )


def _config_keys() -> set[str]:
    """The dotted names of every declared config value (sections excluded)."""
    keys: set[str] = set()
    stack = [("", get_cfg())]
    while stack:
        prefix, node = stack.pop()
        for key, value in node.items():
            full = f"{prefix}.{key}" if prefix else key
            if isinstance(value, dict):
                stack.append((full, value))
            else:
                keys.add(full)
    return keys


def parse_config_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """Parses ``argv`` (default ``sys.argv[1:]``) with a parser given :func:`add_config_arguments`.

    ``args.opts`` is the list of ``KEY VALUE`` words in command-line order, whether they came
    after ``--opts`` (detectron2's spelling) or bare, before, between or after the flags: in
    ``--config-file X A 1 --opts B 2 --resume C 3`` it is ``[A, 1, B, 2, C, 3]``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if parser.usage is None:  # the bare pairs are no argparse argument: name them in the usage
        usage = parser.format_usage().removeprefix("usage: ").rstrip().replace("%", "%%")
        parser.usage = f"{usage} [KEY VALUE ...]"  # argparse %-formats the usage string
    keys = _config_keys()
    marked: list[str] = []
    for token in argv:
        # A declared key ends a list option's values (demo.py --input a.png MODEL.WEIGHTS w): a
        # --opts marker in front of it does. Not after a flag, whose value it would be.
        if token in keys and marked and not marked[-1].startswith("-"):
            marked.append(OPTS_FLAG)
        marked.append(token)
    args, rest = parser.parse_known_args(marked)
    opts = [token for token in rest if token != "--"]
    # Keys never start with "-": one that does is a misspelt flag (a VALUE such as -1 may).
    unknown = [token for token in opts[0::2] if token.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.opts = opts
    return args


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
