"""Optimizer parameter groups, their use in a step, and gradient clipping (hand-computed values)."""

import pytest
import torch
from torch import nn

from idip.config import ConfigError, get_cfg
from idip.engine.optim import build_optimizer, build_param_groups, clip_gradients

from ..conftest import DEVICES


class FrozenBatchNorm2d(nn.Module):
    """Stands in for a FrozenBN: its name marks it as a norm layer."""

    def __init__(self, n):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.bias = nn.Parameter(torch.zeros(n))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), FrozenBatchNorm2d(4))
        self.head = nn.Linear(4, 2)
        self.norm = nn.LayerNorm(2)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def _cfg(**solver):
    cfg = get_cfg()
    cfg.SOLVER.BASE_LR = 0.1
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.5
    cfg.SOLVER.WEIGHT_DECAY = 1e-4
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    for k, v in solver.items():
        cfg.SOLVER[k] = v
    return cfg


def _settings(groups):
    return {name: (g["lr"], g["weight_decay"]) for g in groups for name in g["param_names"]}


def test_groups_backbone_multiplier_and_norm_decay():
    got = _settings(build_param_groups(_cfg(), Net()))
    expected = {
        "backbone.0.weight": (0.05, 1e-4),
        "backbone.0.bias": (0.05, 1e-4),
        "backbone.1.weight": (0.05, 0.0),
        "backbone.1.bias": (0.05, 0.0),
        "backbone.2.weight": (0.05, 0.0),
        "backbone.2.bias": (0.05, 0.0),
        "head.weight": (0.1, 1e-4),
        "head.bias": (0.1, 1e-4),
        "norm.weight": (0.1, 0.0),
        "norm.bias": (0.1, 0.0),
    }  # frozen.* has requires_grad=False: not optimised
    assert got == pytest.approx(expected)


def test_bias_decay_overrides_everything_for_biases():
    got = _settings(build_param_groups(_cfg(WEIGHT_DECAY_BIAS=0.0, WEIGHT_DECAY_NORM=0.5), Net()))
    assert got["head.bias"] == (0.1, 0.0)
    assert got["backbone.0.bias"] == (0.05, 0.0)
    assert got["backbone.1.bias"] == (0.05, 0.0)  # a norm bias: the bias rule wins (detectron2)
    assert got["backbone.1.weight"] == (0.05, 0.5)
    assert got["head.weight"] == (0.1, 1e-4)


def test_equal_settings_share_a_group():
    groups = build_param_groups(_cfg(), Net())
    keys = [(g["lr"], g["weight_decay"]) for g in groups]
    assert len(keys) == len(set(keys)) == 4


def test_sgd_step_uses_each_groups_lr():
    cfg = _cfg(OPTIMIZER="SGD", MOMENTUM=0.0, WEIGHT_DECAY=0.0)
    net = Net()
    opt = build_optimizer(cfg, net)
    assert isinstance(opt, torch.optim.SGD)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    for name, p in net.named_parameters():
        lr = 0.0 if name.startswith("frozen") else (0.05 if name.startswith("backbone") else 0.1)
        torch.testing.assert_close(p.detach(), before[name] - lr, rtol=0, atol=1e-7)


def test_adamw_settings():
    cfg = _cfg(OPTIMIZER="ADAMW", BETAS=(0.8, 0.95))
    opt = build_optimizer(cfg, Net())
    assert isinstance(opt, torch.optim.AdamW)
    assert all(g["betas"] == (0.8, 0.95) for g in opt.param_groups)


@pytest.mark.parametrize("device", DEVICES)
def test_adamw_is_fused_and_steps_like_torchs_reference_adamw(device):
    cfg = _cfg(OPTIMIZER="ADAMW", BETAS=(0.9, 0.99))
    net = Net().to(device)
    twin = Net().to(device)
    twin.load_state_dict(net.state_dict())
    opt = build_optimizer(cfg, net)
    assert opt.defaults["fused"] is True
    # the oracle: torch's single-tensor AdamW over the same groups
    reference = torch.optim.AdamW(
        build_param_groups(cfg, twin), lr=0.1, betas=(0.9, 0.99), foreach=False
    )
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        for a, b in zip(net.parameters(), twin.parameters()):
            if a.requires_grad:
                a.grad = torch.randn(a.shape, generator=generator).to(device)
                b.grad = a.grad.clone()
        opt.step()
        reference.step()
    for (name, a), b in zip(net.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_unknown_optimizer_is_a_config_error():
    with pytest.raises(ConfigError, match="SOLVER.OPTIMIZER"):
        build_optimizer(_cfg(OPTIMIZER="LAMB"), Net())


def test_full_model_clipping_scales_to_max_norm():
    cfg = get_cfg()
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    a.grad, b.grad = torch.tensor([3.0]), torch.tensor([4.0])  # total norm 5
    norm = clip_gradients(cfg, [a, b])
    assert float(norm) == pytest.approx(5.0)
    assert float(a.grad) == pytest.approx(0.6, rel=1e-5) and float(b.grad) == pytest.approx(
        0.8, rel=1e-5
    )


def test_value_clipping_and_disabled():
    cfg = get_cfg()
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "value"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.5
    p = nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([-2.0, 0.25, 3.0])
    clip_gradients(cfg, [p])
    assert p.grad.tolist() == [-0.5, 0.25, 0.5]
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = False
    p.grad = torch.tensor([-2.0, 0.25, 3.0])
    assert clip_gradients(cfg, [p]) is None
    assert p.grad.tolist() == [-2.0, 0.25, 3.0]


@pytest.mark.parametrize(
    "config", ["configs/shapes/CondInst_R18.yaml", "configs/shapes/IDIP_R18.yaml"]
)
def test_weight_decay_of_every_parameter_of_the_built_models(config):
    """Norm parameters are those owned by a normalisation layer, by module type: the FPN's
    Conv2dNorm (a convolution that holds a norm) gets WEIGHT_DECAY for its own weight."""
    from idip.modeling import build_model
    from idip.modeling.backbone.fpn import Conv2dNorm
    from idip.modeling.backbone.norm import FrozenBatchNorm2d as OurFrozenBN

    cfg = get_cfg()
    cfg.merge_from_file(config)
    cfg.SOLVER.WEIGHT_DECAY = 1e-4
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    model = build_model(cfg)
    norm_types = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, OurFrozenBN)
    expected = {}
    for module_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if p.requires_grad:
                key = f"{module_name}.{name}" if module_name else name
                expected[key] = 0.0 if isinstance(module, norm_types) else 1e-4
    got = {n: g["weight_decay"] for g in build_param_groups(cfg, model) for n in g["param_names"]}
    assert got == expected
    fpn_convs = [n for n, m in model.named_modules() if isinstance(m, Conv2dNorm)]
    assert fpn_convs and all(got[f"{n}.weight"] == 1e-4 for n in fpn_convs)
    assert any(v == 0.0 for v in got.values()) and any(v == 1e-4 for v in got.values())
