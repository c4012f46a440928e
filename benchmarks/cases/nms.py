"""nms at 1k/5k/20k boxes and class-aware batched_nms.

Boxes are detector-like: clustered around a few hundred objects of an 800x1216 image, with
random scores. Rows: the plain-PyTorch greedy scan (reference), torchvision.ops.nms /
batched_nms when importable, ours.
"""

from __future__ import annotations

import torch
from timing import Case

import idip.ops
from idip.ops import reference as ref

try:
    import torchvision.ops as tv_ops
except ImportError:
    tv_ops = None


def _boxes(n: int, gen: torch.Generator):
    objects = 300
    centres = torch.rand(objects, 2, generator=gen) * torch.tensor([1216.0, 800.0])
    sizes = torch.exp(torch.rand(objects, 2, generator=gen) * 3.5) * 12
    pick = torch.randint(0, objects, (n,), generator=gen)
    c = centres[pick] + torch.randn(n, 2, generator=gen) * sizes[pick] * 0.15
    wh = sizes[pick] * (0.7 + 0.6 * torch.rand(n, 2, generator=gen))
    boxes = torch.cat([c - wh / 2, c + wh / 2], dim=1)
    scores = torch.rand(n, generator=gen)
    classes = torch.randint(0, 80, (n,), generator=gen)
    return boxes, scores, classes


def cases(device: str) -> list[Case]:
    out = []
    for n in (1000, 5000, 20000):

        def setup(n=n):
            boxes, scores, classes = _boxes(n, torch.Generator().manual_seed(n))
            return boxes.to(device), scores.to(device), classes.to(device)

        impls = {
            "reference": lambda a: ref.nms(a[0], a[1], 0.5),
            "ours": lambda a: idip.ops.nms(a[0], a[1], 0.5),
        }
        if tv_ops is not None:
            impls["torchvision"] = lambda a: tv_ops.nms(a[0], a[1], 0.5)
        out.append(
            Case(
                name=f"nms (K={n}, iou 0.5)", group="nms", pass_kind="fwd", setup=setup, impls=impls
            )
        )

    def setup_batched():
        boxes, scores, classes = _boxes(5000, torch.Generator().manual_seed(1))
        return boxes.to(device), scores.to(device), classes.to(device)

    impls = {
        "reference": lambda a: ref.batched_nms(a[0], a[1], a[2], 0.5),
        "ours": lambda a: idip.ops.batched_nms(a[0], a[1], a[2], 0.5),
    }
    if tv_ops is not None:
        impls["torchvision"] = lambda a: tv_ops.batched_nms(a[0], a[1], a[2], 0.5)
    out.append(
        Case(
            name="batched_nms (K=5000, 80 classes, iou 0.5)",
            group="nms",
            pass_kind="fwd",
            setup=setup_batched,
            impls=impls,
        )
    )
    return out
