"""Builds the frozen config of a run from a file and command-line overrides."""

from __future__ import annotations

import os
from typing import Sequence

from ..utils.file_io import atomic_write_text
from .config import CfgNode, ConfigError
from .defaults import get_cfg


def setup_cfg(
    config_file: str | None = None, opts: Sequence[str] = (), dump: bool = False
) -> CfgNode:
    """Returns the frozen config: defaults, then ``config_file``, then ``opts`` (``KEY VALUE`` ...).

    Args:
        config_file: YAML file (with optional ``_BASE_``) or None for the defaults alone.
        opts: trailing command-line overrides.
        dump: when True, write the final config to ``OUTPUT_DIR/config.yaml``.
    """
    cfg = get_cfg()
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    cfg.freeze()
    if dump:
        dump_cfg(cfg)
    return cfg


def dump_cfg(cfg: CfgNode) -> str:
    """Writes ``cfg`` to ``OUTPUT_DIR/config.yaml`` atomically and returns the path."""
    try:
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    except OSError as err:
        raise ConfigError(
            f"OUTPUT_DIR '{cfg.OUTPUT_DIR}' cannot be created: {err.strerror}"
        ) from None
    path = os.path.join(cfg.OUTPUT_DIR, "config.yaml")
    atomic_write_text(path, cfg.dump())
    return path
