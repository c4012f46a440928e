"""Edge inputs through both real models (built with ``build_model`` from the shapes configs,
shrunk): an empty batch, an image without detections, a 1x1 image, and 10,000 ground-truth
objects in one training image (no tensor of G x G elements may appear)."""

from __future__ import annotations

import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = {
    "IDIP": os.path.join(ROOT, "configs", "shapes", "IDIP_R18.yaml"),
    "CondInst": os.path.join(ROOT, "configs", "shapes", "CondInst_R18.yaml"),
}
SHRINK = {
    "IDIP": [
        "MODEL.FPN.OUT_CHANNELS",
        "32",
        "MODEL.IDIP.HIDDEN_DIM",
        "32",
        "MODEL.IDIP.NUM_PROPOSALS",
        "12",
        "MODEL.IDIP.NUM_HEADS",
        "2",
        "MODEL.IDIP.DIM_DYNAMIC",
        "8",
        "MODEL.IDIP.DIM_FEEDFORWARD",
        "64",
        "MODEL.IDIP.NHEADS",
        "2",
        "MODEL.IDIP.MASK_NUM_CONVS",
        "1",
        "MODEL.IDIP.SAMPLE_STEP",
        "1",
    ],
    "CondInst": [
        # 64 FPN channels: GroupNorm(32) then normalises 2 channels per group, so a 1x1 level
        # still has more than one value per group
        "MODEL.FPN.OUT_CHANNELS",
        "64",
        "MODEL.FCOS.NUM_CLS_CONVS",
        "1",
        "MODEL.FCOS.NUM_BOX_CONVS",
        "1",
        "MODEL.CONDINST.MASK_BRANCH.CHANNELS",
        "16",
        "MODEL.CONDINST.MASK_BRANCH.NUM_CONVS",
        "1",
    ],
}
NO_DETECTIONS = {  # a score threshold no sigmoid probability exceeds
    "IDIP": ["MODEL.IDIP.SCORE_THRESH_TEST", "1.0"],
    "CondInst": ["MODEL.FCOS.INFERENCE_TH_TEST", "1.0"],
}
ARCHS = list(CONFIGS)


def _model(arch: str, *extra: str):
    if not os.path.isfile(CONFIGS[arch]):
        pytest.skip(f"{CONFIGS[arch]} has not landed yet")
    from idip.config import setup_cfg
    from idip.modeling import build_model

    cfg = setup_cfg(
        CONFIGS[arch], ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", *SHRINK[arch], *extra]
    )
    torch.manual_seed(0)
    return build_model(cfg), cfg


def _image_sample(height: int, width: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randint(0, 256, (3, height, width), generator=g, dtype=torch.uint8),
        "height": height,
        "width": width,
        "image_id": seed,
        "file_name": f"img{seed}.png",
    }


def _check_result(result: dict, height: int, width: int, num_classes: int) -> int:
    boxes, scores, labels, masks = (
        result["boxes"],
        result["scores"],
        result["labels"],
        result["masks"],
    )
    k = boxes.shape[0]
    assert boxes.shape == (k, 4) and scores.shape == (k,) and labels.shape == (k,)
    assert labels.dtype == torch.int64 and masks.dtype == torch.bool
    assert masks.shape == (k, height, width)
    assert torch.isfinite(boxes).all() and torch.isfinite(scores).all()
    if k:
        assert (labels >= 0).all() and (labels < num_classes).all()
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= width).all()
        assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= height).all()
    return k


def _num_classes(cfg, arch: str) -> int:
    return cfg.MODEL.IDIP.NUM_CLASSES if arch == "IDIP" else cfg.MODEL.FCOS.NUM_CLASSES


@pytest.mark.parametrize("arch", ARCHS)
def test_empty_batch_gives_an_empty_list(arch):
    model, _ = _model(arch)
    model.eval()
    with torch.no_grad():
        assert model([]) == []


@pytest.mark.parametrize("arch", ARCHS)
def test_image_without_detections(arch):
    model, cfg = _model(arch, *NO_DETECTIONS[arch])
    model.eval()
    with torch.no_grad():
        results = model([_image_sample(40, 56), _image_sample(33, 20, seed=1)])
    assert len(results) == 2
    assert _check_result(results[0], 40, 56, _num_classes(cfg, arch)) == 0
    assert _check_result(results[1], 33, 20, _num_classes(cfg, arch)) == 0


@pytest.mark.parametrize("arch", ARCHS)
def test_single_pixel_image(arch):
    model, cfg = _model(arch)
    model.eval()
    with torch.no_grad():
        (result,) = model([_image_sample(1, 1)])
    _check_result(result, 1, 1, _num_classes(cfg, arch))
    # a 1x1 image next to a normal one in the same batch
    with torch.no_grad():
        tiny, normal = model([_image_sample(1, 1), _image_sample(48, 64, seed=2)])
    _check_result(tiny, 1, 1, _num_classes(cfg, arch))
    _check_result(normal, 48, 64, _num_classes(cfg, arch))


class _LargestOutputs(TorchDispatchMode):
    """Records the shape of every tensor an op produces (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[str, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.shapes.append((str(func), tuple(leaf.shape)))
        return out


def _crowded_sample(num_objects: int, height: int = 64, width: int = 64) -> dict:
    g = torch.Generator().manual_seed(3)
    sample = _image_sample(height, width)
    xy = torch.rand(num_objects, 2, generator=g) * torch.tensor([width - 4.0, height - 4.0])
    wh = 2.0 + torch.rand(num_objects, 2, generator=g) * 6.0
    boxes = torch.cat([xy, torch.minimum(xy + wh, torch.tensor([width * 1.0, height * 1.0]))], 1)
    masks = torch.zeros(num_objects, height, width, dtype=torch.bool)
    ys = torch.arange(height).view(1, height, 1)
    xs = torch.arange(width).view(1, 1, width)
    x0, y0, x1, y1 = (boxes[:, i].floor().long().view(-1, 1, 1) for i in range(4))
    masks = (xs >= x0) & (xs < x1.clamp(min=x0 + 1)) & (ys >= y0) & (ys < y1.clamp(min=y0 + 1))
    sample["instances"] = {
        "boxes": boxes.float(),
        "classes": torch.randint(0, 4, (num_objects,), generator=g),
        "masks": masks,
    }
    return sample


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_ten_thousand_objects_in_one_training_image(arch):
    num_objects = 10_000
    model, _ = _model(arch)
    model.train()
    sample = _crowded_sample(num_objects)
    recorder = _LargestOutputs()
    with recorder:
        losses = model([sample])
        total = sum(losses.values())
        total.backward()
    assert all(torch.isfinite(v).all() for v in losses.values()), losses
    quadratic = [
        (op, shape) for op, shape in recorder.shapes if sum(d >= num_objects for d in shape) >= 2
    ]
    assert not quadratic, f"G x G tensors: {quadratic[:5]}"
    largest = max(recorder.shapes, key=lambda s: torch.Size(s[1]).numel())
    # nothing larger than what the input masks (G x H x W) already hold
    assert torch.Size(largest[1]).numel() <= num_objects * 64 * 64, largest
