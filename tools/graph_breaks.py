#!/usr/bin/env python
"""Counts torch.compile graph breaks of a small IDIP and CondInst (torch._dynamo.explain).

    python tools/graph_breaks.py [--mode eval train] [--arch IDIP CondInst]

Prints, per model and mode, the number of graphs, of breaks, and each distinct break with the
line of our code where it happens. The README's "torch.compile" section lists them and why they
remain; tests/tools/test_graph_breaks.py fails when an inference forward gains a break.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from idip.config import get_cfg  # noqa: E402
from idip.modeling import build_model  # noqa: E402

_SMALL = {
    "common": [
        "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.BACKBONE.FREEZE_AT", 0,
        "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.NORM", "BN", "MODEL.FPN.OUT_CHANNELS", 32,
    ],
    "IDIP": [
        "MODEL.META_ARCHITECTURE", "IDIP", "MODEL.IDIP.NUM_CLASSES", 3, "MODEL.IDIP.HIDDEN_DIM", 32,
        "MODEL.IDIP.NUM_PROPOSALS", 12, "MODEL.IDIP.NUM_HEADS", 2, "MODEL.IDIP.DIM_DYNAMIC", 8,
        "MODEL.IDIP.DIM_FEEDFORWARD", 64, "MODEL.IDIP.NHEADS", 4, "MODEL.IDIP.MASK_NUM_CONVS", 1,
        "MODEL.IDIP.SAMPLE_STEP", 2,
    ],
    "CondInst": [
        "MODEL.META_ARCHITECTURE", "CondInst", "MODEL.FCOS.NUM_CLASSES", 3,
        "MODEL.RESNETS.OUT_FEATURES", ["res3", "res4", "res5"], "MODEL.FPN.TOP_BLOCK", "P6P7",
        "MODEL.FCOS.THRESH_WITH_CTR", True,
        "MODEL.FCOS.NUM_CLS_CONVS", 1, "MODEL.FCOS.NUM_BOX_CONVS", 1,
        "MODEL.CONDINST.MASK_BRANCH.CHANNELS", 32, "MODEL.CONDINST.MASK_BRANCH.NUM_CONVS", 1,
    ],
}  # fmt: skip


def small_model(arch: str) -> torch.nn.Module:
    cfg = get_cfg()
    cfg.merge_from_list(_SMALL["common"] + _SMALL[arch])
    torch.manual_seed(0)
    return build_model(cfg)


def small_batch(train: bool) -> list[dict]:
    """Two 64x96 images with two boxes each (the training targets only when ``train``)."""
    g = torch.Generator().manual_seed(0)
    batch = []
    for i in range(2):
        sample = {
            "image": torch.rand(3, 64, 96, generator=g) * 255,
            "image_id": i,
            "height": 64,
            "width": 96,
        }
        if train:
            masks = torch.zeros(2, 64, 96, dtype=torch.bool)
            masks[0, 8:40, 10:50] = True
            masks[1, 20:60, 50:90] = True
            sample["instances"] = {
                "boxes": torch.tensor([[10.0, 8.0, 50.0, 40.0], [50.0, 20.0, 90.0, 60.0]]),
                "classes": torch.tensor([0, 2]),
                "masks": masks,
            }
        batch.append(sample)
    return batch  # fmt: skip


def explain(arch: str, mode: str) -> dict:
    """{"graphs": int, "breaks": int, "reasons": ["file:line reason", ...]} of one forward."""
    torch._dynamo.reset()
    model = small_model(arch).train(mode == "train")
    out = torch._dynamo.explain(model)(small_batch(mode == "train"))
    reasons = []
    for b in out.break_reasons:
        frame = b.user_stack[-1] if b.user_stack else None
        where = f"{frame.filename.split('idip' + os.sep, 1)[-1]}:{frame.lineno}" if frame else "?"
        line = f"{where} {str(b.reason).splitlines()[0][:120]}"
        if line not in reasons:
            reasons.append(line)
    return {"graphs": out.graph_count, "breaks": out.graph_break_count, "reasons": reasons}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=["CondInst", "IDIP"])
    parser.add_argument("--mode", nargs="+", default=["eval", "train"], choices=["eval", "train"])
    args = parser.parse_args(argv)
    for arch in args.arch:
        for mode in args.mode:
            r = explain(arch, mode)
            print(f"{arch} {mode}: {r['graphs']} graph(s), {r['breaks']} break(s)")
            for reason in r["reasons"]:
                print(f"  - {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
