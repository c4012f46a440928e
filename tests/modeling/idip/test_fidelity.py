"""Where IDIP follows the authors' code (leftthomas/IDIP) in details that change numbers:
prior initialisation, post-processing (zero-area boxes, mask RoIs), the COCO configs' solver
and test settings."""

from __future__ import annotations

import pytest
import torch

from idip.config import get_cfg
from idip.modeling import build_model
from idip.modeling.idip.head import prior_bias

from .test_detector import tiny_cfg

PRIOR = prior_bias(0.01)


def _is_prior(p):
    return p.dim() > 0 and torch.all(p == PRIOR).item()


@pytest.mark.parametrize("num_classes", [4, 7])
def test_prior_by_shape_is_the_authors_rule(num_classes):
    """Every box/mask-head parameter whose last dimension is the class count gets the prior:
    the classifier's and the mask predictor's biases, and with 4 classes also the regressor's."""
    torch.manual_seed(0)
    model = build_model(
        tiny_cfg(**{"MODEL.IDIP.NUM_CLASSES": num_classes, "MODEL.IDIP.PRIOR_INIT_BY_SHAPE": True})
    )
    with_prior = {n for n, p in model.named_parameters() if _is_prior(p)}
    expected = {
        n
        for n, p in list(model.head.named_parameters(prefix="head"))
        + list(model.mask_head.named_parameters(prefix="mask_head"))
        if p.shape[-1] == num_classes
    }
    assert with_prior == expected
    assert {"head.box_head.class_logits.bias", "mask_head.predictor.bias"} <= with_prior
    assert ("head.box_head.box_deltas.bias" in with_prior) == (num_classes == 4)


def test_prior_on_the_class_outputs_only():
    torch.manual_seed(0)
    model = build_model(tiny_cfg(**{"MODEL.IDIP.PRIOR_INIT_BY_SHAPE": False}))
    with_prior = {n for n, p in model.named_parameters() if _is_prior(p)}
    assert with_prior == {"head.box_head.class_logits.bias", "mask_head.predictor.bias"}


def _postprocess_inputs(model, h=64, w=80):
    """Three boxes of one image: inside, partly outside (left edge), and entirely right of the
    image (zero width once clipped). Only class 1 scores above 0.5, for all three."""
    c = model.num_classes
    boxes = torch.tensor([[[10.0, 10, 30, 40], [-20, 5, 15, 25], [90, 10, 120, 30]]])
    logits = torch.full((1, 3, c), -10.0)
    logits[0, :, 1] = torch.tensor([3.0, 2.0, 1.0])
    feats = torch.randn(1, 3, model.head.box_head.class_logits.in_features)
    features = model._features(torch.zeros(1, 3, h, w))
    return features, logits, boxes, feats, [{"height": h, "width": w}], [(h, w)]


@pytest.mark.parametrize("unclipped", [True, False])
def test_postprocess_drops_zero_area_boxes_and_pools_masks_as_configured(unclipped):
    torch.manual_seed(0)
    model = build_model(
        tiny_cfg(
            **{
                "MODEL.IDIP.MASK_FROM_UNCLIPPED_BOXES": unclipped,
                "MODEL.IDIP.NMS_THRESH": 0.99,
                "MODEL.IDIP.SCORE_THRESH_TEST": 0.5,
            }
        )
    ).eval()
    pooled = []
    model.mask_head.register_forward_pre_hook(lambda mod, args: pooled.append(args[1].clone()))
    with torch.no_grad():
        (out,) = model.postprocess(*_postprocess_inputs(model))
    # detectron2's detector_postprocess: clipped, then boxes without width or height dropped
    assert out["boxes"].tolist() == [[10.0, 10, 30, 40], [0, 5, 15, 25]]
    assert out["masks"].shape == (2, 64, 80)
    rois = pooled[0][:, 1:]
    expected = [[10.0, 10, 30, 40], [-20, 5, 15, 25]] if unclipped else out["boxes"].tolist()
    assert rois.tolist() == expected
    # the pasted masks never leave the clipped boxes
    assert not out["masks"][1][:, 15:].any()


@pytest.mark.parametrize("config", ["configs/IDIP_R50.yaml", "configs/IDIP_R101.yaml"])
def test_coco_configs_match_the_authors_settings(config):
    from idip.engine.optim import build_param_groups

    cfg = get_cfg()
    cfg.merge_from_file(config)
    cfg.MODEL.WEIGHTS = ""
    assert cfg.MODEL.IDIP.MASK_SAMPLING_RATIO == 2  # configs/base.yaml POOLER_SAMPLING_RATIO
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 300  # every NMS survivor of the top 300
    assert cfg.MODEL.IDIP.PRIOR_INIT_BY_SHAPE and cfg.MODEL.IDIP.MASK_FROM_UNCLIPPED_BOXES
    model = build_model(cfg)
    decays = {g["weight_decay"] for g in build_param_groups(cfg, model)}
    assert decays == {1e-4}  # the authors' AdamW: one weight decay for every parameter
    assert model.mask_head.pooler.sampling_ratio == 2


@pytest.mark.parametrize("per_image", [True, False])
def test_mask_head_batch_norm_statistics_per_image(per_image):
    """With MASK_NORM_PER_IMAGE the batched mask head gives what the authors' loop gives (the
    head once per image): logits, gradients and running statistics; without it, one batch."""

    def mask_head():
        torch.manual_seed(0)
        cfg = tiny_cfg(
            **{"MODEL.IDIP.MASK_NORM_PER_IMAGE": per_image, "MODEL.IDIP.MASK_NUM_CONVS": 2}
        )
        return build_model(cfg).train().mask_head.double()

    head, loop = mask_head(), mask_head()
    gen = torch.Generator().manual_seed(1)
    features = [
        torch.randn(2, 32, 96 // s, 96 // s, generator=gen, dtype=torch.float64)
        for s in (8, 16, 32)
    ]
    xy = torch.rand(7, 2, generator=gen, dtype=torch.float64) * 60
    rois = torch.cat([torch.tensor([[0.0]] * 3 + [[1.0]] * 4, dtype=torch.float64), xy, xy + 30], 1)
    feats = torch.randn(7, 32, generator=gen, dtype=torch.float64)
    out = head(features, rois, feats)
    if per_image:
        expected = torch.cat(
            [
                loop(
                    [f[i : i + 1] for f in features],
                    torch.cat([torch.zeros(n, 1, dtype=torch.float64), rois[rows, 1:]], 1),
                    feats[rows],
                )
                for i, (rows, n) in enumerate(((slice(0, 3), 3), (slice(3, 7), 4)))
            ]
        )
    else:
        expected = loop(features, rois, feats)
    torch.testing.assert_close(out, expected)
    bns = [m for m in head.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    loop_bns = [m for m in loop.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 2
    for a, b in zip(bns, loop_bns):
        torch.testing.assert_close(a.running_mean, b.running_mean)
        torch.testing.assert_close(a.running_var, b.running_var)
        assert (
            a.num_batches_tracked.item() == b.num_batches_tracked.item() == (2 if per_image else 1)
        )
