"""Training metrics: the periodic log line, tensorboard scalars and ``metrics.json``.

Only rank 0 writes (the caller passes ``enabled=is_main_process()``). ``metrics.json`` holds one
JSON object per line: ``{"iteration": i, "total_loss": ..., "loss_*": ..., "lr": ..., ...}`` for
training and ``{"iteration": i, "eval/<dataset>/bbox/AP": ..., ...}`` for evaluations.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import statistics
from collections import deque
from typing import Any

import torch

logger = logging.getLogger(__name__)


class TrainingEvents:
    """Collects per-iteration scalars and writes them every ``log_period`` iterations.

    Args:
        output_dir: folder of metrics.json and the tensorboard event files.
        max_iter: total iterations (for the ETA).
        window: number of recent values whose median is reported.
        enabled: False on ranks other than 0 (then nothing is written).
        device: the training device (``max_mem`` is reported on CUDA).
    """

    def __init__(
        self,
        output_dir: str,
        max_iter: int,
        window: int = 20,
        enabled: bool = True,
        device: torch.device | None = None,
    ):
        self.output_dir = output_dir
        self.max_iter = max_iter
        self.window = window
        self.enabled = enabled
        self.device = device or torch.device("cpu")
        self._history: dict[str, deque] = {}
        self._latest: dict[str, float] = {}
        self._json = None
        self._tb = None
        if enabled:
            os.makedirs(output_dir, exist_ok=True)
            self._json = open(os.path.join(output_dir, "metrics.json"), "a", encoding="utf-8")
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=output_dir)
            except ImportError as err:  # tensorboard is optional at run time
                logger.warning("tensorboard is not available (%s); writing metrics.json only", err)

    def put_scalars(self, **scalars: float) -> None:
        """Records one value per name for the current iteration."""
        for name, value in scalars.items():
            value = float(value)
            self._history.setdefault(name, deque(maxlen=self.window)).append(value)
            self._latest[name] = value

    def median(self, name: str) -> float:
        return statistics.median(self._history[name])

    def eta_seconds(self, iteration: int) -> float | None:
        if "time" not in self._history:
            return None
        return self.median("time") * max(self.max_iter - iteration - 1, 0)

    def _smoothed(self) -> dict[str, float]:
        # Losses and timings are smoothed over the window; the lr is reported as is.
        return {
            name: (self._latest[name] if name == "lr" else self.median(name))
            for name in self._history
        }

    def format_line(self, iteration: int) -> str:
        """``eta: 0:12:34  iter: 40  total_loss: 1.234  loss_x: ...  time: ...  lr: ...  max_mem: ...``"""
        values = self._smoothed()
        parts = []
        eta = self.eta_seconds(iteration)
        if eta is not None:
            parts.append(f"eta: {datetime.timedelta(seconds=int(eta))}")
        parts.append(f"iter: {iteration}")
        losses = sorted(n for n in values if n.startswith("loss_"))
        for name in (["total_loss"] if "total_loss" in values else []) + losses:
            parts.append(f"{name}: {values[name]:.4g}")
        for name in ("time", "data_time"):
            if name in values:
                parts.append(f"{name}: {values[name]:.4f}")
        if "lr" in values:
            parts.append(f"lr: {values['lr']:.5g}")
        if self.device.type == "cuda" and torch.cuda.is_available():
            parts.append(f"max_mem: {torch.cuda.max_memory_allocated(self.device) / 2**20:.0f}M")
        return "  ".join(parts)

    def write(self, iteration: int) -> None:
        """Writes the log line, a metrics.json line and tensorboard scalars for ``iteration``."""
        if not self.enabled or not self._history:
            return
        logger.info(self.format_line(iteration))
        values = self._smoothed()
        eta = self.eta_seconds(iteration)
        if eta is not None:
            values["eta_seconds"] = eta
        self._write_record(iteration, values)

    def write_eval(self, iteration: int, results: dict[str, Any]) -> None:
        """Writes evaluation results ``{dataset: {"bbox": {"AP": ..}, "segm": {..}}}``."""
        if not self.enabled:
            return
        flat = {}
        for dataset, tasks in results.items():
            for task, metrics in (tasks or {}).items():
                if isinstance(metrics, dict):
                    for metric, value in metrics.items():
                        if isinstance(value, (int, float)):
                            flat[f"eval/{dataset}/{task}/{metric}"] = float(value)
        if flat:
            self._write_record(iteration, flat)

    def _write_record(self, iteration: int, values: dict[str, float]) -> None:
        record = {"iteration": int(iteration)}
        record.update({k: (v if math.isfinite(v) else str(v)) for k, v in values.items()})
        self._json.write(json.dumps(record) + "\n")
        self._json.flush()
        if self._tb is not None:
            for name, value in values.items():
                if math.isfinite(value):
                    self._tb.add_scalar(name, value, iteration)
            self._tb.flush()

    def close(self) -> None:
        if self._json is not None:
            self._json.close()
            self._json = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
