"""Converts an authors' released checkpoint into this repository's checkpoint format.

    python tools/convert_weights.py SRC DST

SRC: an AdelaiDet CondInst model-zoo file or the IDIP authors' model.pth (detectron2 names);
DST: a checkpoint that ``MODEL.WEIGHTS`` loads without converting again. It prints what was
mapped, folded and ignored, and the config values the weights need (they are also stored in
DST, and checked when it is loaded). ``MODEL.WEIGHTS SRC`` converts on load just the same.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from idip.config import ConfigError  # noqa: E402
from idip.engine.checkpoint import CHECKPOINT_FORMAT  # noqa: E402
from idip.modeling.authors_checkpoints import (  # noqa: E402
    convert_authors_checkpoint,
    unwrap_state_dict,
)
from idip.utils.checkpoint_file import CheckpointError, read_checkpoint  # noqa: E402
from idip.utils.file_io import atomic_torch_save  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("src", help="the authors' checkpoint")
    parser.add_argument("dst", help="where to write the converted checkpoint")
    args = parser.parse_args(argv)
    try:
        if os.path.exists(args.dst):
            raise CheckpointError(f"{args.dst} exists; remove it or choose another output path")
        state = unwrap_state_dict(read_checkpoint(args.src))
        if state is None:
            raise CheckpointError(
                f"{args.src} is neither an AdelaiDet CondInst checkpoint nor an "
                "IDIP authors' one (no converter recognises its keys)"
            )
        conversion = convert_authors_checkpoint(state)
        if conversion.unmapped:
            raise CheckpointError(
                f"{args.src} has keys no conversion rule knows: "
                + ", ".join(conversion.unmapped[:10])
            )
        atomic_torch_save(
            {
                "format": CHECKPOINT_FORMAT,
                "meta_architecture": conversion.meta_architecture,
                "iteration": 0,
                "model": conversion.state,
                "converted_from": conversion.format,
                "required_settings": conversion.settings,
            },
            args.dst,
        )
    except (CheckpointError, ConfigError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(conversion.summary())
    print(f"wrote {args.dst} ({conversion.meta_architecture})")
    needed = " ".join(f"{k} {v}" for k, v in conversion.settings.items())
    print(f"the weights need: {needed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
