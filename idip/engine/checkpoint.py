"""Checkpoints: atomic writes, exact resume, and loading weights given in ``MODEL.WEIGHTS``.

Files in ``OUTPUT_DIR``: ``model_{iter:07d}.pth`` (periodic), ``model_final.pth`` and
``last_checkpoint`` (a text file naming the newest). Every file is written to a temporary file in
the same folder, flushed and fsync'd, then renamed over the target with ``os.replace``, so a crash
at any moment leaves either the old file or the new one, never a torn one.

A checkpoint is a dict loadable with ``torch.load(weights_only=True)``::

    {"format": "idip-checkpoint-v1", "meta_architecture": str, "iteration": int (last finished,
     0-based), "model": state_dict, "optimizer": ..., "scheduler": ..., "grad_scaler": ...,
     "config": YAML text, "world_size": int, "rng_states": [per-rank RNG state]}
"""

from __future__ import annotations

import errno
import logging
import os
import re
from typing import Any

import torch
from torch import nn

from ..modeling.authors_checkpoints import (
    Conversion,
    check_settings,
    convert_authors_checkpoint,
    unwrap_state_dict,
)
from ..modeling.backbone.weights import load_backbone_weights, pretrained_weights_hint
from ..utils.checkpoint_file import CheckpointError, read_checkpoint
from ..utils.file_io import atomic_torch_save, atomic_write_text

CHECKPOINT_FORMAT = "idip-checkpoint-v1"
LAST_CHECKPOINT = "last_checkpoint"
_PERIODIC_NAME = re.compile(r"^model_(\d{7})\.pth$")
# Temporary files of idip.utils.file_io.atomic_write for this folder's checkpoints: ".{target}.tmp.{pid}".
_TEMPORARY_NAME = re.compile(r"^\.(model_\d{7}\.pth|model_final\.pth|last_checkpoint)\.tmp\.(\d+)$")

logger = logging.getLogger(__name__)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper (else ``model``)."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def _read_dict(path: str) -> dict:
    data = read_checkpoint(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint file {path} holds a {type(data).__name__}, not a dict")
    return data


def is_full_checkpoint(data: dict) -> bool:
    return data.get("format") == CHECKPOINT_FORMAT and "model" in data


def _list(names: list[str], limit: int = 15) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def load_model_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Loads ``state`` into ``model`` requiring the same keys and shapes.

    Raises:
        CheckpointError: listing the missing keys, unexpected keys and shape mismatches.
    """
    model = unwrap_model(model)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} (checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)})"
        for k in own
        if k in state
        and isinstance(state[k], torch.Tensor)
        and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_list(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {_list(mismatched)}")
    if problems:
        raise CheckpointError(
            f"weights in {source} do not fit {type(model).__name__}: " + "; ".join(problems)
        )
    model.load_state_dict(state, strict=True)


def load_weights(model: nn.Module, path: str, meta_architecture: str, cfg=None) -> str:
    """Loads ``MODEL.WEIGHTS``: a full checkpoint of ours (model only), an authors' released
    checkpoint (AdelaiDet CondInst, IDIP authors: converted on load), or backbone-only weights.

    Args:
        model: the (possibly DDP-wrapped) model.
        path: a checkpoint written by this engine (or tools/convert_weights.py), an authors'
            checkpoint, a torchvision ResNet .pth, or a detectron2 .pkl.
        meta_architecture: ``MODEL.META_ARCHITECTURE`` of the run, checked against the checkpoint.
        cfg: the run's config, checked against the settings an authors' checkpoint or
            ImageNet backbone weights need (MODEL.RESNETS.STRIDE_IN_1X1, MODEL.PIXEL_STD);
            MODEL.RESNETS.DEPTH picks the files a missing backbone file's error suggests.

    Returns:
        A one-paragraph report of what was loaded (and converted or skipped).
    """
    if not os.path.isfile(path):
        depth = int(cfg.MODEL.RESNETS.DEPTH) if cfg is not None else None
        hint = pretrained_weights_hint(path, depth)
        raise CheckpointError(
            f"MODEL.WEIGHTS file not found: {path}" + (f". {hint}" if hint else "")
        )
    data = None
    if not path.endswith(".pkl"):
        data = _read_dict(path)
        authors_state = unwrap_state_dict(data)
        if authors_state is not None:
            conversion = convert_authors_checkpoint(authors_state)
            if conversion.unmapped:
                raise CheckpointError(
                    f"{path} looks like an {conversion.format} checkpoint but has keys no "
                    f"conversion rule knows: {_list(conversion.unmapped)}"
                )
            if cfg is not None:
                check_settings(conversion, cfg, path)
            load_model_state_strict(model, conversion.state, path)
            return f"converted and loaded {path}: {conversion.summary()}"
        if is_full_checkpoint(data):
            if cfg is not None and data.get("required_settings"):
                _check_required_settings(data, cfg, path)
            stored = data.get("meta_architecture")
            if stored != meta_architecture:
                raise CheckpointError(
                    f"checkpoint {path} holds a {stored} model but MODEL.META_ARCHITECTURE is "
                    f"{meta_architecture}; use a {meta_architecture} checkpoint or change the config"
                )
            load_model_state_strict(model, data["model"], path)
            return f"loaded {stored} weights from {path} (iteration {data.get('iteration')})"
        if "model" in data and isinstance(data["model"], dict) and "meta_architecture" in data:
            raise CheckpointError(f"checkpoint {path} has an unknown format {data.get('format')!r}")
    # The backbone loader finds the ResNet (and FPN) inside the whole model, and checks that
    # the stride convention and MODEL.PIXEL_STD fit the weights.
    pixel_std = list(cfg.MODEL.PIXEL_STD) if cfg is not None else None
    report = load_backbone_weights(unwrap_model(model), path, pixel_std=pixel_std)
    return f"loaded backbone weights from {path}: {report}"


def _non_finite(tensors: dict, prefix: str) -> list[str]:
    bad = []
    for key, value in tensors.items():
        if isinstance(value, torch.Tensor):
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                bad.append(f"{prefix}{key}")
        elif isinstance(value, dict):
            bad += _non_finite(value, f"{prefix}{key}.")
        elif isinstance(value, (list, tuple)):
            bad += _non_finite(dict(enumerate(value)), f"{prefix}{key}.")
    return bad


def check_finite_state(state: dict, iteration: int, last: str | None) -> None:
    """Refuses to checkpoint non-finite weights or optimizer state: a checkpoint is what a run
    resumes from, and resuming from non-finite weights stops again at once."""
    bad = _non_finite(state.get("model") or {}, "") + _non_finite(
        (state.get("optimizer") or {}).get("state") or {}, "optimizer state "
    )
    if bad:
        raise FloatingPointError(
            f"after iteration {iteration} {len(bad)} tensors are not finite (e.g. {_list(bad, 3)}): "
            "checkpoint not written; the optimizer step diverged (lower SOLVER.BASE_LR or enable "
            "SOLVER.CLIP_GRADIENTS)" + (f"; last good checkpoint: {last}" if last else "")
        )


def _write_failure(path: str, err: BaseException, last: str | None) -> str:
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        reason = "the disk is full"
    elif isinstance(err, OSError):
        reason = err.strerror or str(err)
    else:  # torch's zip writer reports a short write as "unexpected pos ..."
        reason = "the write failed (is the disk full?)"
    kept = f"; the previous checkpoint {last} is intact" if last else ""
    return f"could not write checkpoint {path}: {reason}{kept}"


def _check_required_settings(data: dict, cfg, path: str) -> None:
    """A converted authors' checkpoint records the settings its weights need: check them."""
    conversion = Conversion(
        format=str(data.get("converted_from", "converted")),
        meta_architecture=str(data.get("meta_architecture")),
        settings=dict(data["required_settings"]),
    )
    check_settings(conversion, cfg, path)


def find_last_checkpoint(output_dir: str) -> str | None:
    """The file named by ``output_dir/last_checkpoint``, or None when there is no such file.

    Raises:
        CheckpointError: ``last_checkpoint`` is empty or names something outside the folder.
    """
    marker = os.path.join(output_dir, LAST_CHECKPOINT)
    if not os.path.isfile(marker):
        return None
    with open(marker, encoding="utf-8") as f:
        name = f.read().strip()
    if not name:
        raise CheckpointError(f"{marker} is empty; delete it to start from scratch")
    if os.path.isabs(name) or os.path.basename(name) != name or name in (".", ".."):
        raise CheckpointError(
            f"{marker} names '{name}', which is not a file in OUTPUT_DIR: it must name one "
            "of this folder's checkpoints (e.g. model_final.pth)"
        )
    return os.path.join(output_dir, name)


# ---------------------------------------------------------------------------------------------
# Training checkpoints
# ---------------------------------------------------------------------------------------------
class Checkpointer:
    """Saves and restores the full training state in ``output_dir``.

    ``save`` writes files and should be called on rank 0 only; ``load`` runs on every rank.
    """

    def __init__(
        self,
        model: nn.Module,
        output_dir: str,
        meta_architecture: str,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        grad_scaler: Any = None,
        config_text: str = "",
        max_keep: int = 0,
    ):
        self.model = model
        self.output_dir = output_dir
        self.meta_architecture = meta_architecture
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.grad_scaler = grad_scaler
        self.config_text = config_text
        self.max_keep = max_keep

    # --- writing ---------------------------------------------------------------------------
    def state(self, iteration: int, rng_states: list | None = None) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "meta_architecture": self.meta_architecture,
            "iteration": int(iteration),
            "model": unwrap_model(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "grad_scaler": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "config": self.config_text,
            "world_size": len(rng_states) if rng_states else 1,
            "rng_states": rng_states or [],
        }

    def save(self, name: str, iteration: int, rng_states: list | None = None) -> str:
        """Writes ``OUTPUT_DIR/{name}.pth`` then points ``last_checkpoint`` at it.

        Raises:
            FloatingPointError: parameters or optimizer state are not finite (nothing written).
            CheckpointError: the file could not be written (the previous checkpoint is intact).
        """
        self._remove_stale_temporaries()
        filename = f"{name}.pth"
        path = os.path.join(self.output_dir, filename)
        state = self.state(iteration, rng_states)
        check_finite_state(state, iteration, self.last_checkpoint_path_or_none())
        try:
            atomic_torch_save(state, path)
            atomic_write_text(os.path.join(self.output_dir, LAST_CHECKPOINT), filename + "\n")
        except (OSError, RuntimeError) as err:
            raise CheckpointError(
                _write_failure(path, err, self.last_checkpoint_path_or_none())
            ) from None
        logger.info("saved checkpoint %s (iteration %d)", path, iteration)
        self._prune()
        return path

    def _remove_stale_temporaries(self) -> None:
        """Deletes half-written checkpoint files left by an earlier process that was killed while
        saving (they are never read, but each can be as large as a checkpoint)."""
        if not os.path.isdir(self.output_dir):
            return
        for entry in os.listdir(self.output_dir):
            match = _TEMPORARY_NAME.match(entry)
            if match and int(match.group(2)) != os.getpid():
                try:
                    os.remove(os.path.join(self.output_dir, entry))
                    logger.info("removed %s, left by a run killed while saving", entry)
                except OSError:
                    pass  # removed concurrently, or not ours to remove

    def _prune(self) -> None:
        if self.max_keep <= 0:
            return
        periodic = sorted(f for f in os.listdir(self.output_dir) if _PERIODIC_NAME.match(f))
        for old in periodic[: -self.max_keep]:
            os.remove(os.path.join(self.output_dir, old))

    def last_checkpoint_path_or_none(self) -> str | None:
        try:
            return self.last_checkpoint_path()
        except CheckpointError:
            return None

    # --- reading ---------------------------------------------------------------------------
    def last_checkpoint_path(self) -> str | None:
        """The file named by ``OUTPUT_DIR/last_checkpoint``, or None when there is no such file."""
        return find_last_checkpoint(self.output_dir)

    def load(self, path: str) -> dict:
        """Restores model, optimizer, scheduler and grad scaler from a full checkpoint.

        Returns:
            The checkpoint dict (``iteration``, ``rng_states``, ``config`` ...).
        """
        data = _read_dict(path)
        if not is_full_checkpoint(data):
            raise CheckpointError(f"{path} is not a training checkpoint written by idip.engine")
        stored = data.get("meta_architecture")
        if stored != self.meta_architecture:
            raise CheckpointError(
                f"checkpoint {path} holds a {stored} model but MODEL.META_ARCHITECTURE is {self.meta_architecture}"
            )
        load_model_state_strict(self.model, data["model"], path)
        try:
            if self.optimizer is not None and data.get("optimizer") is not None:
                self.optimizer.load_state_dict(data["optimizer"])
        except (ValueError, KeyError) as err:
            raise CheckpointError(
                f"optimizer state in {path} does not fit this run: {err}"
            ) from None
        if self.scheduler is not None and data.get("scheduler") is not None:
            self.scheduler.load_state_dict(data["scheduler"])
        if self.grad_scaler is not None and data.get("grad_scaler"):
            self.grad_scaler.load_state_dict(data["grad_scaler"])
        return data
