"""``inference_on_dataset``: run a model over a test loader and hand its outputs to an evaluator."""

from __future__ import annotations

import contextlib
import datetime
import logging
import time
from typing import Iterable, Protocol

import torch
from torch import nn
from tqdm import tqdm

from ..utils.distributed import get_world_size, is_main_process

logger = logging.getLogger(__name__)


class Evaluator(Protocol):
    def reset(self) -> None: ...

    def process(self, inputs: list[dict], outputs: list[dict]) -> None: ...

    def evaluate(self) -> dict: ...


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def inference_on_dataset(
    model: nn.Module, loader: Iterable[list[dict]], evaluator: Evaluator
) -> dict:
    """Runs ``model`` in eval mode over ``loader`` and returns ``evaluator.evaluate()``.

    Every rank runs its own shard (the test loader gives each image to exactly one rank); the
    evaluator gathers them. The model's train/eval mode is restored afterwards. Gradients are off
    through ``torch.no_grad`` rather than ``inference_mode``, so tensors a model caches during
    evaluation stay usable when training resumes.

    Args:
        model: in eval mode, ``model(batch) -> list[dict]`` (one per sample).
        loader: finite iterable of batches (``list[dict]`` of dataset samples).
        evaluator: has ``reset()``, ``process(inputs, outputs)`` and ``evaluate()``.

    Returns:
        the evaluator's result (``{}`` on ranks that do not evaluate).
    """
    try:
        total = len(loader)  # type: ignore[arg-type]
    except TypeError:
        total = None
    logger.info(
        "start inference on %s batches (%d process(es))",
        "?" if total is None else total,
        get_world_size(),
    )
    evaluator.reset()
    warmup = 0 if total is None else min(5, max(total - 1, 0))
    images, timed_images, compute_time = 0, 0, 0.0
    start = time.perf_counter()
    with _eval_mode(model), torch.no_grad():
        progress = tqdm(
            loader, total=total, disable=not is_main_process(), desc="inference", dynamic_ncols=True
        )
        for index, inputs in enumerate(progress):
            tic = time.perf_counter()
            outputs = model(inputs)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            if index >= warmup:
                compute_time += time.perf_counter() - tic
                timed_images += len(inputs)
            evaluator.process(inputs, outputs)
            images += len(inputs)
    elapsed = time.perf_counter() - start
    logger.info(
        "inference done on %d images in %s (%.4f s/image model time, %d warm-up batches "
        "excluded; %.4f s/image overall) per process",
        images,
        datetime.timedelta(seconds=int(elapsed)),
        compute_time / max(timed_images, 1),
        warmup,
        elapsed / max(images, 1),
    )
    results = evaluator.evaluate()
    return {} if results is None else results
