"""FCOS inference on hand-made head outputs: decoding, thresholds, top-k, class-aware NMS."""

from __future__ import annotations

import math

import pytest
import torch

from idip.config import get_cfg
from idip.modeling.condinst.fcos import FCOS, FCOSOutputs


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _fcos(**overrides) -> FCOS:
    cfg = get_cfg()
    cfg.MODEL.FCOS.NUM_CLASSES = 2
    cfg.MODEL.FCOS.IN_FEATURES = ["p3", "p4"]
    cfg.MODEL.FCOS.FPN_STRIDES = [8, 16]
    cfg.MODEL.FCOS.SIZES_OF_INTEREST = [64]
    cfg.MODEL.FCOS.NUM_CLS_CONVS = 0
    cfg.MODEL.FCOS.NUM_BOX_CONVS = 0
    for k, v in overrides.items():
        setattr(cfg.MODEL.FCOS, k, v)
    return FCOS(cfg, {"p3": (32, 8), "p4": (32, 16)})


def _outputs(probs, ctr, reg, params=True) -> FCOSOutputs:
    """4 locations: 3 on level 0 (stride 8) at x = 4, 12, 20 and 1 on level 1 at x = 8 (y = 4/8)."""
    probs = torch.tensor(probs)
    logits = torch.log(probs / (1 - probs))[None]
    return FCOSOutputs(
        logits=logits,
        box_reg=torch.tensor(reg)[None],
        ctrness=torch.tensor([_logit(c) for c in ctr])[None],
        top_feats=torch.arange(4 * 3, dtype=torch.float32).reshape(1, 4, 3) if params else None,
        locations=torch.tensor([[4.0, 4.0], [12.0, 4.0], [20.0, 4.0], [8.0, 8.0]]),
        levels=torch.tensor([0, 0, 0, 1]),
        strides=torch.tensor([8.0, 8.0, 8.0, 16.0]),
        level_sizes=[3, 1],
    )


def _nms(boxes, scores, idxs, thr):
    tv = pytest.importorskip("torchvision")
    return tv.ops.batched_nms(boxes, scores, idxs, thr)


def test_decoding_scores_and_threshold_with_centerness():
    fcos = _fcos(THRESH_WITH_CTR=True)
    out = _outputs(
        probs=[[0.9, 0.01], [0.2, 0.01], [0.01, 0.01], [0.01, 0.6]],
        ctr=[0.5, 0.2, 0.9, 0.5],
        reg=[
            [1.0, 1.0, 1.0, 1.0],
            [0.5, 0.5, 0.5, 0.5],
            [1.0, 1.0, 1.0, 1.0],
            [1.0, 0.5, 2.0, 0.25],
        ],
    )
    (det,) = fcos.predict(out, _nms)
    # 0.9*0.5 = 0.45 and 0.6*0.5 = 0.3 pass 0.05; 0.2*0.2 = 0.04 does not.
    assert det["labels"].tolist() == [0, 1]
    torch.testing.assert_close(det["scores"], torch.tensor([0.45, 0.3]).sqrt())
    # Distances are in strides: location (4, 4), (1,1,1,1)*8; location (8, 8), (1,.5,2,.25)*16.
    torch.testing.assert_close(
        det["boxes"], torch.tensor([[-4.0, -4.0, 12.0, 12.0], [-8.0, 0.0, 40.0, 12.0]])
    )
    assert det["levels"].tolist() == [0, 1]
    torch.testing.assert_close(det["locations"], torch.tensor([[4.0, 4.0], [8.0, 8.0]]))
    torch.testing.assert_close(det["params"], torch.tensor([[0.0, 1.0, 2.0], [9.0, 10.0, 11.0]]))
    # Without THRESH_WITH_CTR the class probability alone is thresholded: 0.2 passes too.
    (det,) = _fcos(THRESH_WITH_CTR=False).predict(out, _nms)
    assert sorted(det["scores"].tolist()) == pytest.approx(sorted([0.45**0.5, 0.3**0.5, 0.04**0.5]))


def test_class_aware_nms_and_top_k():
    # Locations 0 and 1 predict nearly the same box: same class -> one survives; the level-1
    # location predicts it for another class and survives.
    reg = [[2.0, 1.0, 2.0, 1.0], [3.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0], [1.0, 0.5, 1.0, 0.5]]
    out = _outputs(
        probs=[[0.9, 0.01], [0.8, 0.01], [0.01, 0.01], [0.01, 0.7]], ctr=[1 - 1e-6] * 4, reg=reg
    )
    (det,) = _fcos(NMS_TH=0.6).predict(out, _nms)
    assert det["labels"].tolist() == [0, 1]
    (det,) = _fcos(NMS_TH=0.6, POST_NMS_TOPK_TEST=1).predict(out, _nms)
    assert det["labels"].tolist() == [0]
    # Pre-NMS top-1 per level keeps location 0 on level 0 and location 3 on level 1.
    (det,) = _fcos(NMS_TH=1.0, PRE_NMS_TOPK_TEST=1).predict(out, _nms)
    assert det["levels"].tolist() == [0, 1]


def test_padding_locations_are_no_candidates_when_asked():
    # Every location scores 0.9; the image is 16 wide and 8 high (x = 4, 12 are inside, x = 20 on
    # level 0 and (8, 8) on level 1 lie in the padding of a larger batch).
    out = _outputs(probs=[[0.9, 0.01]] * 4, ctr=[1 - 1e-6] * 4, reg=[[0.1] * 4] * 4)
    (det,) = _fcos(NMS_TH=1.0).predict(out, _nms, [(8, 16)])
    assert sorted(det["locations"][:, 0].tolist()) == [4.0, 8.0, 12.0, 20.0]  # the authors' way
    (det,) = _fcos(NMS_TH=1.0, IGNORE_PADDING_LOCATIONS=True).predict(out, _nms, [(8, 16)])
    assert sorted(det["locations"][:, 0].tolist()) == [4.0, 12.0]
    (det,) = _fcos(NMS_TH=1.0, IGNORE_PADDING_LOCATIONS=True).predict(out, _nms, [(16, 32)])
    assert len(det["scores"]) == 4  # nothing is padding in a 32x16 image


def test_no_candidates_give_empty_tensors():
    out = _outputs(probs=[[0.01, 0.01]] * 4, ctr=[0.5] * 4, reg=[[1.0] * 4] * 4, params=False)
    (det,) = _fcos().predict(out, _nms)
    assert det["boxes"].shape == (0, 4)
    assert det["scores"].shape == (0,) and det["labels"].shape == (0,)
    assert det["params"].shape == (0, 0)


def test_backbone_mismatch_is_reported():
    cfg = get_cfg()
    with pytest.raises(ValueError, match="P6P7"):
        FCOS(cfg, {"p3": (256, 8), "p4": (256, 16), "p5": (256, 32)})
    cfg.MODEL.FCOS.IN_FEATURES = ["p3", "p4"]
    cfg.MODEL.FCOS.FPN_STRIDES = [8, 32]
    with pytest.raises(ValueError, match="FPN_STRIDES"):
        FCOS(cfg, {"p3": (256, 8), "p4": (256, 16)})
