"""Process-level setup shared by train.py, eval.py and demo.py: torch flags, seeds, class count."""

from __future__ import annotations

import logging
import os
import platform

import torch
from torch import nn

from ..config import ConfigError
from ..data.datasets import get_dataset, register_from_cfg
from ..utils.distributed import get_rank, shared_random_seed
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


def slow_amp_warning(cfg, device_type: str) -> str | None:
    """A warning when ``SOLVER.AMP`` is on for an x86 CPU without AVX-512: there PyTorch's
    bfloat16/float16 convolutions and matmuls have no fast kernel (measured on a 2-core AVX2 EPYC
    with torch 2.14: a 3x3 convolution 245x, a 1024x1024 matmul 180x slower than float32), so the
    run would take hours instead of minutes. None when AMP is off or the device is not such a CPU."""
    if not cfg.SOLVER.AMP.ENABLED or device_type != "cpu":
        return None
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return None
    capability = torch.backends.cpu.get_cpu_capability()
    if capability.startswith("AVX512"):
        return None
    return (
        f"SOLVER.AMP.ENABLED is on for a CPU whose widest instructions are {capability}: "
        f"PyTorch has no fast {cfg.SOLVER.AMP.DTYPE} convolution or matmul on it (100-250x "
        "slower than float32 here, see benchmarks/README.md); set SOLVER.AMP.ENABLED False"
    )


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


def check_num_classes(model: nn.Module, cfg, dataset_names) -> None:
    """Checks that the model's class count equals that of every dataset in ``dataset_names``.

    A mismatch would otherwise surface late and obscurely: class targets out of range in the
    middle of training, or predictions the evaluator rejects after the whole run. The model says
    its count (``model.num_classes``) and the config key that sets it
    (``model.num_classes_key``); a model without ``num_classes`` is not checked.

    Raises:
        ConfigError: naming the key, its value, the dataset and the dataset's classes.
    """
    count = getattr(model, "num_classes", None)
    if count is None or not dataset_names:
        return
    key = getattr(model, "num_classes_key", "the model's number of classes")
    register_from_cfg(cfg)
    for name in dataset_names:
        info = get_dataset(name)
        if info.num_classes != int(count):
            raise ConfigError(
                f"config key '{key}' is {int(count)} but dataset '{name}' has {info.num_classes} "
                f"classes {info.thing_classes}; set {key} {info.num_classes}"
            )
