"""Where CondInst follows AdelaiDet in details that change numbers: FCOS positives sampled
around each ground-truth mask's centre of mass (adet/modeling/fcos/fcos_outputs.py
get_sample_region, fed the full-size bitmasks by CondInst.add_bitmasks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from idip.config import get_cfg

from .test_condinst_model import _build, shapes_samples, tiny_cfg


@pytest.mark.parametrize(
    "config",
    [
        "configs/CondInst_R50_1x.yaml",
        "configs/CondInst_R50_3x.yaml",
        "configs/CondInst_R101_3x.yaml",
        "configs/shapes/CondInst_R18.yaml",
    ],
)
def test_configs_sample_positives_around_mask_centres(config):
    cfg = get_cfg()
    cfg.merge_from_file(config)
    assert cfg.MODEL.FCOS.CENTER_SAMPLE and cfg.MODEL.FCOS.CENTER_SAMPLE_ON_MASK


@pytest.mark.parametrize("on_mask", [True, False])
def test_training_targets_use_the_mask_centre_of_mass(on_mask):
    """An L-shaped mask, whose centre of mass is far from its box centre: the FCOS targets get
    the centre of mass (numpy's, over pixel indices) with the flag on, nothing without it."""
    cfg = tiny_cfg()
    cfg.MODEL.FCOS.CENTER_SAMPLE_ON_MASK = on_mask
    model = _build(cfg).train()
    sample = shapes_samples(1)[0]
    mask = np.zeros((96, 128), dtype=bool)
    mask[10:70, 20:30] = True
    mask[60:70, 20:100] = True
    sample["instances"] = {
        "boxes": torch.tensor([[20.0, 10, 100, 70]]),
        "classes": torch.tensor([1]),
        "masks": torch.from_numpy(mask)[None],
    }
    seen = []
    real = model.fcos.targets
    model.fcos.targets = lambda outputs, boxes, classes, centers: (
        seen.append(centers) or real(outputs, boxes, classes, centers)
    )
    model([sample])
    if not on_mask:
        assert seen == [None]
        return
    ys, xs = np.nonzero(mask)
    expected = torch.tensor([[xs.mean(), ys.mean()]], dtype=torch.float32)
    torch.testing.assert_close(seen[0][0], expected)
    assert (expected - torch.tensor([[60.0, 40.0]])).abs().max() > 10  # not the box centre
