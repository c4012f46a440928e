"""Engine tests change process-wide state (the ``idip`` logger, deterministic algorithms, cudnn
flags); restore it after each test so other test modules see the defaults."""

import contextlib
import logging

import pytest
import torch


@contextlib.contextmanager
def preserved_process_state():
    logger = logging.getLogger("idip")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    saved_torch = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )
    try:
        yield
    finally:
        for handler in list(logger.handlers):
            if handler not in handlers:
                logger.removeHandler(handler)
                handler.close()
        logger.level, logger.propagate = level, propagate
        torch.use_deterministic_algorithms(saved_torch[0], warn_only=saved_torch[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved_torch[2:]


@pytest.fixture(autouse=True)
def restore_process_state():
    with preserved_process_state():
        yield
