"""Process-level setup shared by train.py, eval.py and demo.py: torch flags, seeds, batch split."""

from __future__ import annotations

import logging
import os

import torch

from ..config import ConfigError
from .distributed import get_rank, get_world_size, shared_random_seed
from .seeding import seed_all

logger = logging.getLogger(__name__)


def configure_torch(cfg) -> None:
    """``CUDNN_BENCHMARK`` -> cudnn.benchmark; ``DETERMINISTIC`` -> deterministic algorithms."""
    torch.backends.cudnn.benchmark = bool(cfg.CUDNN_BENCHMARK) and not cfg.DETERMINISTIC
    if cfg.DETERMINISTIC:
        # cuBLAS needs this before its first use to be deterministic.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        # warn_only: an op without a deterministic kernel warns instead of stopping the run.
        torch.use_deterministic_algorithms(True, warn_only=True)


def resolve_seed(cfg, stored_seed: int | None = None) -> int:
    """The run's seed: ``SEED`` when >= 0, else the seed of the run being resumed, else a random
    seed drawn on rank 0 and shared with every rank."""
    if cfg.SEED >= 0:
        return int(cfg.SEED)
    if stored_seed is not None and stored_seed >= 0:
        return int(stored_seed)
    return shared_random_seed()


def seed_process(seed: int) -> None:
    """Seeds this process with ``seed + rank`` (different augmentation/noise on every rank)."""
    seed_all(seed + get_rank())


def grad_accum_steps(cfg) -> int:
    """Forward/backward passes per optimizer step (``SOLVER.GRAD_ACCUM_STEPS``, 0 meaning 1)."""
    steps = int(cfg.SOLVER.GRAD_ACCUM_STEPS)
    if steps < 0:
        raise ConfigError(f"config key 'SOLVER.GRAD_ACCUM_STEPS' must be >= 0, got {steps}")
    return max(steps, 1)


def check_batch_split(cfg) -> int:
    """Checks that ``SOLVER.IMS_PER_BATCH`` splits evenly over ranks and accumulation steps.

    Returns:
        Images per forward pass on this rank.
    """
    total = int(cfg.SOLVER.IMS_PER_BATCH)
    world = get_world_size()
    accum = grad_accum_steps(cfg)
    if total <= 0 or total % (world * accum):
        raise ConfigError(
            f"config key 'SOLVER.IMS_PER_BATCH' is {total}, which does not split evenly over "
            f"{world} process(es) x {accum} accumulation step(s) (SOLVER.GRAD_ACCUM_STEPS)"
        )
    return total // (world * accum)
