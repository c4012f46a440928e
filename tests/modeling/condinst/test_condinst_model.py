"""CondInst end to end on tiny synthetic shapes images: losses, training signal, inference output."""

from __future__ import annotations

import pytest
import torch

from idip.config import get_cfg

from ...conftest import DEVICES


def tiny_cfg(use_reference: bool = True):
    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = "CondInst"
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.USE_REFERENCE_OPS = use_reference
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    cfg.MODEL.FPN.OUT_CHANNELS = 64
    cfg.MODEL.FPN.TOP_BLOCK = "P6P7"
    cfg.MODEL.FCOS.NUM_CLASSES = 3
    cfg.MODEL.FCOS.NUM_CLS_CONVS = 1
    cfg.MODEL.FCOS.NUM_BOX_CONVS = 1
    cfg.MODEL.FCOS.THRESH_WITH_CTR = True
    cfg.MODEL.CONDINST.MASK_BRANCH.CHANNELS = 32
    cfg.MODEL.CONDINST.MASK_BRANCH.NUM_CONVS = 1
    return cfg


def shapes_samples(num: int, height: int = 96, width: int = 128, seed: int = 0) -> list[dict]:
    """Coloured rectangles and discs (class = shape kind) on a noisy background."""
    g = torch.Generator().manual_seed(seed)
    ys = torch.arange(height)[:, None]
    xs = torch.arange(width)[None, :]
    colours = torch.tensor([[230, 40, 40], [40, 200, 40], [40, 60, 230]], dtype=torch.float32)
    samples = []
    for i in range(num):
        image = torch.rand(3, height, width, generator=g) * 60 + 40
        boxes, classes, masks = [], [], []
        for k in range(2):
            cls = int(torch.randint(0, 3, (1,), generator=g))
            size = int(torch.randint(24, 48, (1,), generator=g))
            x0 = int(torch.randint(0, width - size, (1,), generator=g))
            y0 = int(torch.randint(0, height - size, (1,), generator=g))
            if cls == 1:  # disc
                r = size / 2
                m = (xs - x0 - r + 0.5) ** 2 + (ys - y0 - r + 0.5) ** 2 <= r * r
            else:  # rectangle (class 0: wide, class 2: tall)
                w, h = (size, size * 2 // 3) if cls == 0 else (size * 2 // 3, size)
                m = (xs >= x0) & (xs < x0 + w) & (ys >= y0) & (ys < y0 + h)
            for prev in masks:  # later shapes occlude earlier ones
                prev &= ~m
            image[:, m] = colours[cls][:, None]
            masks.append(m)
            classes.append(cls)
        masks_t = torch.stack(masks)
        for m in masks_t:
            yy, xx = m.nonzero(as_tuple=True)
            boxes.append(
                [xx.min().item(), yy.min().item(), xx.max().item() + 1, yy.max().item() + 1]
            )
        samples.append(
            {
                "image": image.to(torch.uint8),
                "height": height,
                "width": width,
                "image_id": i,
                "file_name": f"synthetic_{i}.png",
                "instances": {
                    "boxes": torch.tensor(boxes, dtype=torch.float32),
                    "classes": torch.tensor(classes, dtype=torch.int64),
                    "masks": masks_t,
                },
            }
        )
    return samples


def _build(cfg):
    from idip.modeling import build_model

    torch.manual_seed(0)
    return build_model(cfg)


def test_controller_predicts_169_parameters_per_location():
    model = _build(tiny_cfg())
    assert model.mask_head.num_gen_params == 169
    assert model.controller.out_channels == 169
    assert model.controller.in_channels == 64  # the box tower's width


def test_training_returns_the_four_losses_with_gradients():
    model = _build(tiny_cfg())
    model.train()
    losses = model(shapes_samples(2))
    assert set(losses) == {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr", "loss_mask"}
    for name, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), name
    sum(losses.values()).backward()
    assert model.controller.weight.grad is not None and model.controller.weight.grad.abs().sum() > 0
    assert model.mask_branch.tower[-1].weight.grad.abs().sum() > 0


def test_max_proposals_limits_the_mask_loss_instances(monkeypatch):
    cfg = tiny_cfg()
    cfg.MODEL.CONDINST.MAX_PROPOSALS = 3
    model = _build(cfg)
    model.train()
    seen = []
    original = model.mask_head.loss
    monkeypatch.setattr(
        model.mask_head,
        "loss",
        lambda logits, t: (seen.append((logits.shape, t.shape)), original(logits, t))[1],
    )
    model(shapes_samples(2))
    ((logit_shape, target_shape),) = seen
    assert logit_shape[0] == 3 and target_shape[0] == 3
    # Default: stride-4 logits for a 96x128 input -> 24x32.
    assert tuple(logit_shape[-2:]) == (24, 32) and tuple(target_shape[-2:]) == (24, 32)


def test_mask_loss_at_feature_stride_switch(monkeypatch):
    cfg = tiny_cfg()
    cfg.MODEL.CONDINST.MASK_LOSS_AT_FEAT_STRIDE = True
    model = _build(cfg)
    model.train()
    seen = []
    original = model.mask_head.loss
    monkeypatch.setattr(
        model.mask_head,
        "loss",
        lambda logits, t: (seen.append((logits.shape, t.shape)), original(logits, t))[1],
    )
    losses = model(shapes_samples(2))
    ((logit_shape, target_shape),) = seen
    assert tuple(logit_shape[-2:]) == (12, 16) and tuple(target_shape[-2:]) == (12, 16)
    assert torch.isfinite(losses["loss_mask"])


def test_images_without_instances_give_finite_losses():
    model = _build(tiny_cfg())
    model.train()
    sample = shapes_samples(1)[0]
    sample["instances"] = {
        "boxes": torch.zeros((0, 4)),
        "classes": torch.zeros((0,), dtype=torch.int64),
        "masks": torch.zeros((0, 96, 128), dtype=torch.bool),
    }
    losses = model([sample])
    assert losses["loss_mask"].item() == 0.0
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()


def test_zero_detections_give_an_empty_valid_result():
    cfg = tiny_cfg()
    cfg.MODEL.FCOS.INFERENCE_TH_TEST = 1.1  # no probability can pass
    model = _build(cfg).eval()
    sample = shapes_samples(1)[0]
    sample.pop("instances")
    sample["height"], sample["width"] = 150, 200
    (out,) = model([sample])
    assert out["boxes"].shape == (0, 4) and out["boxes"].dtype == torch.float32
    assert out["scores"].shape == (0,)
    assert out["labels"].shape == (0,) and out["labels"].dtype == torch.int64
    assert out["masks"].shape == (0, 150, 200) and out["masks"].dtype == torch.bool


def test_inference_returns_masks_and_boxes_at_the_original_size():
    cfg = tiny_cfg()
    cfg.MODEL.FCOS.INFERENCE_TH_TEST = 0.0  # an untrained model: keep every candidate
    model = _build(cfg).eval()
    samples = shapes_samples(2)
    samples[0]["height"], samples[0]["width"] = 150, 200  # resized by 96/150 for the network
    samples[1]["image"] = samples[1]["image"][:, :80, :100]
    samples[1]["height"], samples[1]["width"] = 80, 100
    outs = model(samples)
    for out, (h, w) in zip(outs, [(150, 200), (80, 100)]):
        k = out["boxes"].shape[0]
        assert 0 < k <= cfg.MODEL.FCOS.POST_NMS_TOPK_TEST
        assert out["masks"].shape == (k, h, w) and out["masks"].dtype == torch.bool
        assert out["scores"].shape == (k,) and out["labels"].shape == (k,)
        assert (out["boxes"][:, 0::2] >= 0).all() and (out["boxes"][:, 0::2] <= w).all()
        assert (out["boxes"][:, 1::2] >= 0).all() and (out["boxes"][:, 1::2] <= h).all()
        assert (out["scores"][:-1] >= out["scores"][1:]).all()


@pytest.mark.slow
def test_loss_decreases_on_a_few_shapes_images():
    model = _build(tiny_cfg())
    model.train()
    samples = shapes_samples(2, seed=3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    history = []
    for _ in range(12):
        losses = model(samples)
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append({k: v.item() for k, v in losses.items()})
    first = sum(sum(h.values()) for h in history[:2]) / 2
    last = sum(sum(h.values()) for h in history[-2:]) / 2
    assert last < 0.7 * first, (first, last)
    first_mask = sum(h["loss_mask"] for h in history[:2]) / 2
    last_mask = sum(h["loss_mask"] for h in history[-2:]) / 2
    assert last_mask < 0.8 * first_mask, (first_mask, last_mask)


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_ops_match_reference_ops(device):
    samples = shapes_samples(2)
    outs = {}
    for use_reference in (True, False):
        cfg = tiny_cfg(use_reference)
        cfg.MODEL.DEVICE = device
        model = _build(cfg)
        model.train()
        outs[use_reference] = {k: v.item() for k, v in model(samples).items()}
    for name in outs[True]:
        assert abs(outs[True][name] - outs[False][name]) < 1e-3 * max(1.0, abs(outs[True][name])), (
            name
        )


def test_bfloat16_autocast_on_cpu_trains_and_infers():
    """SOLVER.AMP on a CPU: the fused mask head takes bfloat16 features (computed in float32)."""
    cfg = tiny_cfg(use_reference=False)
    cfg.MODEL.FCOS.INFERENCE_TH_TEST = 0.0
    model = _build(cfg)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(shapes_samples(2))
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.controller.weight.grad.abs().sum() > 0
    model.eval()
    samples = shapes_samples(1)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        (out,) = model(samples)
    assert out["boxes"].shape[0] > 0
    assert out["masks"].shape[1:] == (samples[0]["height"], samples[0]["width"])
