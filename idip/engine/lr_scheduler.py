"""Warmup + multistep learning-rate schedule (detectron2's WarmupMultiStepLR)."""

from __future__ import annotations

from bisect import bisect_right
from typing import Sequence

import torch
from torch.optim.lr_scheduler import LRScheduler

from ..config import ConfigError


def warmup_factor_at(iteration: int, method: str, warmup_iters: int, warmup_factor: float) -> float:
    """Learning-rate factor of the warmup at ``iteration`` (1.0 once the warmup is over).

    "linear" goes from ``warmup_factor`` at iteration 0 straight towards 1.0 at ``warmup_iters``;
    "constant" stays at ``warmup_factor`` during the warmup.
    """
    if iteration >= warmup_iters:
        return 1.0
    if method == "constant":
        return warmup_factor
    if method == "linear":
        alpha = iteration / warmup_iters
        return warmup_factor * (1.0 - alpha) + alpha
    raise ValueError(f"unknown warmup method {method!r}; use 'linear' or 'constant'")


class WarmupMultiStepLR(LRScheduler):
    """lr(it) = base_lr * warmup_factor_at(it) * gamma ** (number of milestones <= it).

    ``step()`` is called once per optimizer step, so ``last_epoch`` counts iterations.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        milestones: Sequence[int],
        gamma: float = 0.1,
        warmup_factor: float = 0.001,
        warmup_iters: int = 1000,
        warmup_method: str = "linear",
        last_epoch: int = -1,
    ):
        milestones = [int(m) for m in milestones]
        if milestones != sorted(milestones):
            raise ValueError(f"milestones must be increasing, got {milestones}")
        if warmup_method not in ("linear", "constant"):
            raise ValueError(f"unknown warmup method {warmup_method!r}; use 'linear' or 'constant'")
        self.milestones = milestones
        self.gamma = float(gamma)
        self.warmup_factor = float(warmup_factor)
        self.warmup_iters = int(warmup_iters)
        self.warmup_method = warmup_method
        super().__init__(optimizer, last_epoch)

    def factor_at(self, iteration: int) -> float:
        """The multiplier of every group's initial lr at ``iteration``."""
        warmup = warmup_factor_at(
            iteration, self.warmup_method, self.warmup_iters, self.warmup_factor
        )
        return warmup * self.gamma ** bisect_right(self.milestones, iteration)

    def get_lr(self) -> list[float]:
        factor = self.factor_at(self.last_epoch)
        return [base_lr * factor for base_lr in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()

    def load_state_dict(self, state_dict: dict) -> None:
        """Restores the position (``last_epoch``) only, and sets every group's lr for it.

        Milestones, gamma and warmup come from the config of the run that loads the state, so a
        resumed run follows its own schedule from the iteration it continues at.
        """
        self.last_epoch = int(state_dict["last_epoch"])
        self._step_count = int(state_dict.get("_step_count", self.last_epoch + 1))
        lrs = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self._last_lr = list(lrs)


def build_lr_scheduler(cfg, optimizer: torch.optim.Optimizer) -> WarmupMultiStepLR:
    """The schedule of ``SOLVER.STEPS/GAMMA/WARMUP_*`` for ``optimizer``."""
    solver = cfg.SOLVER
    steps = [int(s) for s in solver.STEPS]
    if steps != sorted(steps) or any(s <= 0 for s in steps):
        raise ConfigError(
            f"config key 'SOLVER.STEPS' must be increasing positive iterations, got {tuple(solver.STEPS)}"
        )
    if solver.WARMUP_METHOD not in ("linear", "constant"):
        raise ConfigError(
            f"config key 'SOLVER.WARMUP_METHOD' must be 'linear' or 'constant', got {solver.WARMUP_METHOD!r}"
        )
    if solver.WARMUP_ITERS < 0:
        raise ConfigError(
            f"config key 'SOLVER.WARMUP_ITERS' must be >= 0, got {solver.WARMUP_ITERS}"
        )
    return WarmupMultiStepLR(
        optimizer,
        milestones=steps,
        gamma=solver.GAMMA,
        warmup_factor=solver.WARMUP_FACTOR,
        warmup_iters=solver.WARMUP_ITERS,
        warmup_method=solver.WARMUP_METHOD,
    )
