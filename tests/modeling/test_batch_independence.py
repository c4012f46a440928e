"""An image's detections do not depend on the other images of its batch, apart from the zero
padding the convolutions see: with every image of the batch the same size (no padding), an
image gives the same result alone and with others (#23 item 3)."""

from __future__ import annotations

import pytest
import torch

from idip.modeling import build_model

from .condinst.test_condinst_model import shapes_samples
from .condinst.test_condinst_model import tiny_cfg as condinst_cfg
from .idip.test_detector import tiny_cfg as idip_cfg


def _model(arch: str):
    if arch == "IDIP":
        cfg = idip_cfg(**{"MODEL.IDIP.SCORE_THRESH_TEST": 0.0})
    else:
        cfg = condinst_cfg(use_reference=False)
        cfg.MODEL.FCOS.INFERENCE_TH_TEST = 0.0  # random weights: keep every candidate
    torch.manual_seed(0)
    return build_model(cfg).eval()


@pytest.mark.parametrize("arch", ["IDIP", "CondInst"])
def test_same_size_batch_mates_do_not_change_an_images_result(arch):
    model = _model(arch)
    samples = shapes_samples(3, height=64, width=96, seed=4)  # 64x96: no padding at stride 32
    for i, s in enumerate(samples):
        s["image_id"] = i
    with torch.no_grad():
        alone = model(samples[:1])[0]
        together = model(samples)[0]
        reversed_batch = model(samples[::-1])[-1]
    assert len(alone["scores"]) > 0
    for other in (together, reversed_batch):
        k = min(20, len(alone["scores"]))
        assert len(other["scores"]) == len(alone["scores"])
        torch.testing.assert_close(other["scores"][:k], alone["scores"][:k], atol=1e-4, rtol=0)
        torch.testing.assert_close(other["boxes"][:k], alone["boxes"][:k], atol=1e-2, rtol=0)
        assert torch.equal(other["labels"][:k], alone["labels"][:k])
        differ = (other["masks"][:k] != alone["masks"][:k]).float().mean()
        assert differ < 1e-3
