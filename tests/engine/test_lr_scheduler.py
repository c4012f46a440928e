"""WarmupMultiStepLR against hand-computed learning rates."""

import pytest
import torch
from torch import nn

from idip.config import ConfigError, get_cfg
from idip.engine.lr_scheduler import build_lr_scheduler
from idip.engine.optim import build_optimizer


def _lrs(method, iters=10):
    cfg = get_cfg()
    cfg.SOLVER.OPTIMIZER = "SGD"
    cfg.SOLVER.BASE_LR = 1.0
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.5
    cfg.SOLVER.WARMUP_METHOD = method
    cfg.SOLVER.WARMUP_FACTOR = 0.1
    cfg.SOLVER.WARMUP_ITERS = 4
    cfg.SOLVER.STEPS = (6, 8)
    cfg.SOLVER.GAMMA = 0.1
    model = nn.Module()
    model.backbone = nn.Linear(1, 1)
    model.head = nn.Linear(1, 1)
    opt = build_optimizer(cfg, model)
    sched = build_lr_scheduler(cfg, opt)
    by_group = {"backbone": [], "head": []}
    for _ in range(iters):
        for g in opt.param_groups:
            by_group[g["param_names"][0].split(".")[0]].append(g["lr"])
        opt.step()
        sched.step()
    return by_group


def test_linear_warmup_then_steps():
    # linear: factor(it) = 0.1 * (1 - it/4) + it/4 for it < 4; x0.1 from it 6, x0.01 from it 8.
    expected = [0.1, 0.325, 0.55, 0.775, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
    got = _lrs("linear")
    assert got["head"] == pytest.approx(expected)
    assert got["backbone"] == pytest.approx([0.5 * v for v in expected])


def test_constant_warmup():
    expected = [0.1, 0.1, 0.1, 0.1, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
    assert _lrs("constant")["head"] == pytest.approx(expected)


def test_bad_steps_are_config_errors():
    cfg = get_cfg()
    cfg.SOLVER.STEPS = (80, 60)
    opt = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=1.0)
    with pytest.raises(ConfigError, match="SOLVER.STEPS"):
        build_lr_scheduler(cfg, opt)
    cfg.SOLVER.STEPS = (10,)
    cfg.SOLVER.WARMUP_METHOD = "cosine"
    with pytest.raises(ConfigError, match="SOLVER.WARMUP_METHOD"):
        build_lr_scheduler(cfg, opt)
