"""Python logging for a run: console on rank 0, ``OUTPUT_DIR/log.txt`` on rank 0."""

from __future__ import annotations

import logging
import os
import sys

_FORMAT = "[%(asctime)s %(name)s %(levelname)s] %(message)s"
_DATEFMT = "%m/%d %H:%M:%S"


def setup_logger(output_dir: str | None, rank: int = 0, name: str = "idip") -> logging.Logger:
    """Configures the ``idip`` logger (and ``__main__``) once per process.

    Rank 0 logs INFO to stdout and to ``output_dir/log.txt`` (appended, so a resumed run keeps
    the earlier lines); other ranks log only warnings and errors, to stderr, prefixed with their
    rank.

    Args:
        output_dir: folder of log.txt, or None for console only.
        rank: this process's rank.
        name: the logger to configure.
    """
    logger = logging.getLogger(name)
    for handler in list(logger.handlers):
        if getattr(handler, "_idip_handler", False):
            logger.removeHandler(handler)
            handler.close()
    logger.setLevel(logging.INFO)
    logger.propagate = False
    handlers: list[logging.Handler] = []
    if rank == 0:
        console = logging.StreamHandler(sys.stdout)
        console.setLevel(logging.INFO)
        console.setFormatter(logging.Formatter(_FORMAT, _DATEFMT))
        handlers.append(console)
        if output_dir:
            os.makedirs(output_dir, exist_ok=True)
            file_handler = logging.FileHandler(
                os.path.join(output_dir, "log.txt"), encoding="utf-8"
            )
            file_handler.setLevel(logging.INFO)
            file_handler.setFormatter(logging.Formatter(_FORMAT, _DATEFMT))
            handlers.append(file_handler)
    else:
        console = logging.StreamHandler(sys.stderr)
        console.setLevel(logging.WARNING)
        console.setFormatter(logging.Formatter(f"[rank {rank}] " + _FORMAT, _DATEFMT))
        handlers.append(console)
    for handler in handlers:
        handler._idip_handler = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    return logger
