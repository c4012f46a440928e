"""The training loop: DDP, AMP, gradient accumulation, clipping, checkpoints, periodic evaluation.

One iteration = one optimizer step = ``SOLVER.IMS_PER_BATCH`` images over all ranks, split into
``SOLVER.GRAD_ACCUM_STEPS`` forward/backward passes per rank. Subclasses may override
``build_model``, ``build_train_loader`` and ``evaluate`` (detectron2's DefaultTrainer style).
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import logging
import math
import os
import time
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from ..config import CfgNode, ConfigError
from ..config.setup import dump_cfg
from ..data import build_train_loader
from ..data.build import (
    grad_accum_steps,
    num_loader_workers,
    test_batch_size,
    train_batch_size_per_rank,
)
from ..modeling import build_model, resolve_device
from ..modeling.backbone.norm import revert_sync_batchnorm
from ..utils.distributed import (
    all_gather,
    broadcast_object,
    get_rank,
    get_world_size,
    init_distributed,
    is_dist,
    is_main_process,
    reduce_dict,
)
from .checkpoint import (
    Checkpointer,
    CheckpointError,
    find_last_checkpoint,
    load_weights,
    read_checkpoint,
    unwrap_model,
)
from .evaluate import evaluate_datasets
from .events import TrainingEvents
from .logger import setup_logger
from .lr_scheduler import build_lr_scheduler
from .optim import build_optimizer, clip_gradients
from .resume_check import check_resume_config, stored_config_value
from .run_directory import RunLock, check_fresh_start, make_output_dir
from .runtime import (
    check_num_classes,
    configure_torch,
    resolve_seed,
    seed_process,
    slow_amp_warning,
)
from .seeding import capture_rng_state, restore_rng_state, seed_all

logger = logging.getLogger(__name__)

_AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def restarted_by_torchrun() -> bool:
    """True when torchrun (torchelastic) has restarted the workers after a failure."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0) > 0


class Trainer:
    """Builds everything a run needs from ``cfg`` and trains.

    Args:
        cfg: the run's config (frozen or not; a resolved SEED is written into a copy).
        resume: continue from ``OUTPUT_DIR/last_checkpoint`` when it exists. Always on when
            torchrun restarted the workers.
        start_over: without ``resume``, train from scratch in an OUTPUT_DIR that holds a
            previous run (its files are moved to ``replaced_run_<time>/``); without it, such a
            folder is refused.
        allow_config_change: resume even when the config differs from the checkpoint's in a
            way that makes the result differ from an uninterrupted run (every difference is
            logged either way).
    """

    def __init__(
        self,
        cfg: CfgNode,
        resume: bool = False,
        start_over: bool = False,
        allow_config_change: bool = False,
    ):
        self._allow_config_change = allow_config_change
        self.device = resolve_device(cfg)
        init_distributed(self.device.type)
        if self.device.type == "cuda" and get_world_size() > 1:
            self.device = torch.device("cuda", torch.cuda.current_device())
        resume = resume or restarted_by_torchrun()
        self._lock = None
        replaced = None
        if is_main_process():
            make_output_dir(cfg.OUTPUT_DIR)
            self._lock = RunLock(cfg.OUTPUT_DIR)
        try:
            if is_main_process() and not resume:
                replaced = check_fresh_start(cfg.OUTPUT_DIR, start_over)
            self._setup(cfg, resume, replaced)
        except BaseException:
            self.release_output_dir()
            raise

    def release_output_dir(self) -> None:
        """Lets another run use OUTPUT_DIR (at the end of train(), or after a failed start)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _setup(self, cfg: CfgNode, resume: bool, replaced: str | None) -> None:
        setup_logger(cfg.OUTPUT_DIR, get_rank())
        if replaced:
            logger.info(replaced)
        configure_torch(cfg)
        self._validate(cfg)
        self.per_rank_batch = train_batch_size_per_rank(cfg)
        self.accum_steps = grad_accum_steps(cfg)

        resume_path, resume_data = self._find_resume_checkpoint(cfg) if resume else (None, None)
        stored_seed = (
            stored_config_value(resume_data.get("config"), "SEED") if resume_data else None
        )
        seed = resolve_seed(cfg, stored_seed)
        if cfg.SEED < 0:
            logger.info(
                "SEED is %d (drawn at random%s)",
                seed,
                "" if stored_seed is None else " by the resumed run",
            )
        cfg = cfg.clone()
        cfg.defrost()
        cfg.SEED = seed
        cfg.freeze()
        self.cfg = cfg
        if resume_data is not None and resume_data.get("config"):
            check_resume_config(
                resume_data["config"],
                cfg.dump(),
                resume_path,
                self._allow_config_change,
                logger.warning,
            )

        # Same seed on every rank for the initial weights (DDP also broadcasts rank 0's).
        seed_all(seed)
        model = self.build_model(cfg)
        model = self._maybe_sync_bn(model)
        self.optimizer = build_optimizer(cfg, model)
        self.scheduler = build_lr_scheduler(cfg, self.optimizer)
        self.amp_dtype = self._amp_dtype(cfg)
        amp_warning = slow_amp_warning(cfg, self.device.type)
        if amp_warning:
            logger.warning(amp_warning)
        self.grad_scaler = torch.amp.GradScaler(
            self.device.type, enabled=cfg.SOLVER.AMP.ENABLED and self.amp_dtype == torch.float16
        )
        self.checkpointer = Checkpointer(
            model,
            cfg.OUTPUT_DIR,
            cfg.MODEL.META_ARCHITECTURE,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            grad_scaler=self.grad_scaler,
            config_text=cfg.dump(),
            max_keep=cfg.SOLVER.CHECKPOINT_MAX_KEEP,
        )
        self.start_iter = 0
        seed_process(seed)
        if resume_path is not None:
            data = self.checkpointer.load(resume_path)
            self.start_iter = int(data["iteration"]) + 1
            self._restore_rng(data.get("rng_states") or [])
            logger.info("resumed from %s: continuing at iteration %d", resume_path, self.start_iter)
        elif cfg.MODEL.WEIGHTS:
            logger.info(
                load_weights(model, cfg.MODEL.WEIGHTS, cfg.MODEL.META_ARCHITECTURE, cfg=cfg)
            )

        self.model = self._wrap_ddp(model, cfg)
        self.max_iter = int(cfg.SOLVER.MAX_ITER)
        if is_main_process():
            path = dump_cfg(cfg)
            logger.info("config written to %s", path)
        logger.info(
            "world size %d, %d image(s) per forward pass per rank, %d accumulation step(s), "
            "%d image(s) per iteration, device %s",
            get_world_size(),
            self.per_rank_batch,
            self.accum_steps,
            cfg.SOLVER.IMS_PER_BATCH,
            self.device,
        )

    # --- building blocks (overridable) ---------------------------------------------------
    def build_model(self, cfg: CfgNode) -> nn.Module:
        model = build_model(cfg)
        logger.info(
            "model %s: %.2fM parameters",
            cfg.MODEL.META_ARCHITECTURE,
            sum(p.numel() for p in model.parameters()) / 1e6,
        )
        return model

    def build_train_loader(self, cfg: CfgNode, start_iter: int) -> Iterable[list[dict]]:
        """The per-rank loader, positioned at iteration ``start_iter``: each ``next()`` gives the
        batch of one forward pass, GRAD_ACCUM_STEPS of them per iteration, so the loader starts at
        its batch ``start_iter * GRAD_ACCUM_STEPS``."""
        check_num_classes(unwrap_model(self.model), cfg, list(cfg.DATASETS.TRAIN))
        return build_train_loader(cfg, start_iter)

    def evaluate(self, cfg: CfgNode, model: nn.Module) -> dict[str, Any]:
        return evaluate_datasets(cfg, model)

    # --- setup helpers ---------------------------------------------------------------------
    @staticmethod
    def _validate(cfg: CfgNode) -> None:
        solver = cfg.SOLVER
        lr = solver.BASE_LR
        if (
            isinstance(lr, bool)
            or not isinstance(lr, (int, float))
            or not math.isfinite(lr)
            or lr <= 0
        ):
            raise ConfigError(
                f"config key 'SOLVER.BASE_LR' must be a finite number > 0, got {lr!r}"
            )
        test_batch_size(cfg)  # checked now, not after training when evaluation starts
        num_loader_workers(cfg)
        if solver.MAX_ITER <= 0:
            raise ConfigError(f"config key 'SOLVER.MAX_ITER' must be > 0, got {solver.MAX_ITER}")
        if solver.CHECKPOINT_PERIOD < 0:
            raise ConfigError(
                f"config key 'SOLVER.CHECKPOINT_PERIOD' must be >= 0, got {solver.CHECKPOINT_PERIOD}"
            )
        if cfg.TEST.EVAL_PERIOD < 0:
            raise ConfigError(
                f"config key 'TEST.EVAL_PERIOD' must be >= 0, got {cfg.TEST.EVAL_PERIOD}"
            )
        if cfg.LOG_PERIOD <= 0:
            raise ConfigError(f"config key 'LOG_PERIOD' must be > 0, got {cfg.LOG_PERIOD}")
        if solver.AMP.DTYPE not in _AMP_DTYPES:
            raise ConfigError(
                f"config key 'SOLVER.AMP.DTYPE' must be 'bfloat16' or 'float16', got {solver.AMP.DTYPE!r}"
            )

    @staticmethod
    def _amp_dtype(cfg: CfgNode) -> torch.dtype:
        return _AMP_DTYPES[cfg.SOLVER.AMP.DTYPE]

    def _find_resume_checkpoint(self, cfg: CfgNode) -> tuple[str | None, dict | None]:
        # Rank 0 decides, so that every rank resumes from the same file (or none does).
        found: tuple[str | None, str | None] = (None, None)
        if is_main_process():
            try:
                found = (find_last_checkpoint(cfg.OUTPUT_DIR), None)
            except CheckpointError as err:
                found = (None, str(err))
        path, error = broadcast_object(found)
        if error:
            raise CheckpointError(error)
        if path is None:
            logger.info("no last_checkpoint in %s: starting from scratch", cfg.OUTPUT_DIR)
            return None, None
        visible = all_gather(os.path.isfile(path))
        if not visible[0]:
            raise CheckpointError(
                f"cannot resume: {os.path.join(cfg.OUTPUT_DIR, 'last_checkpoint')} names {path}, "
                "which does not exist (file not found); restore it, or point last_checkpoint at "
                "another checkpoint of the folder"
            )
        if not all(visible):
            blind = [rank for rank, ok in enumerate(visible) if not ok]
            raise CheckpointError(
                f"rank(s) {blind} cannot read {path}: to resume, OUTPUT_DIR must be on a file "
                "system shared by every node"
            )
        return path, read_checkpoint(path)

    def _restore_rng(self, rng_states: list) -> None:
        if len(rng_states) == get_world_size():
            restore_rng_state(rng_states[get_rank()])
        else:
            # A different number of ranks: exact continuation is impossible; reseed per iteration.
            logger.warning(
                "checkpoint holds RNG states of %d rank(s), this run has %d: reseeding instead",
                len(rng_states),
                get_world_size(),
            )
            seed_all(self.cfg.SEED + get_rank() + 1_000_003 * self.start_iter)

    def _maybe_sync_bn(self, model: nn.Module) -> nn.Module:
        """``DDP.SYNC_BN``: every BatchNorm becomes a SyncBatchNorm (several ranks on CUDA).

        SyncBatchNorm needs CUDA: on another device in a process group every one of them (those
        a config's norm "SyncBN" built too) is a per-rank BatchNorm.
        """
        if self.device.type == "cuda":
            if self.cfg.DDP.SYNC_BN and get_world_size() > 1:
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            return model
        if not is_dist():
            return model  # one process: a SyncBatchNorm computes as a BatchNorm
        if self.cfg.DDP.SYNC_BN or any(isinstance(m, nn.SyncBatchNorm) for m in model.modules()):
            logger.warning(
                "SyncBatchNorm needs CUDA; keeping per-rank BatchNorm on %s", self.device
            )
        return revert_sync_batchnorm(model)

    def _wrap_ddp(self, model: nn.Module, cfg: CfgNode) -> nn.Module:
        if get_world_size() == 1:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        kwargs = {
            "device_ids": device_ids,
            "find_unused_parameters": cfg.DDP.FIND_UNUSED_PARAMETERS,
        }
        if not cfg.DDP.BROADCAST_BUFFERS:
            # Newer torch renames broadcast_buffers (and warns about the old name).
            params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
            kwargs[
                "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
            ] = False
        return nn.parallel.DistributedDataParallel(model, **kwargs)

    # --- the loop --------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Trains from ``start_iter`` to ``SOLVER.MAX_ITER``, then saves ``model_final.pth`` and
        evaluates. Returns the final evaluation results."""
        cfg = self.cfg
        events = TrainingEvents(
            cfg.OUTPUT_DIR, self.max_iter, enabled=is_main_process(), device=self.device
        )
        self.events = events
        results: dict[str, Any] = {}
        try:
            loader = self._isolated(lambda: iter(self.build_train_loader(cfg, self.start_iter)))
            self.model.train()
            logger.info("starting training at iteration %d of %d", self.start_iter, self.max_iter)
            train_start = time.perf_counter()
            for iteration in range(self.start_iter, self.max_iter):
                start = time.perf_counter()
                losses, data_time = self.run_step(loader, iteration)
                scalars = dict(losses)
                scalars["total_loss"] = sum(losses.values())
                events.put_scalars(
                    **scalars,
                    lr=self._reported_lr(),
                    time=time.perf_counter() - start,
                    data_time=data_time,
                )
                self.scheduler.step()
                done = iteration + 1
                if done % cfg.LOG_PERIOD == 0 or done == self.max_iter:
                    events.write(iteration)
                if (
                    cfg.SOLVER.CHECKPOINT_PERIOD
                    and done % cfg.SOLVER.CHECKPOINT_PERIOD == 0
                    and done < self.max_iter
                ):
                    self.save(f"model_{iteration:07d}", iteration)
                if (
                    cfg.TEST.EVAL_PERIOD
                    and done % cfg.TEST.EVAL_PERIOD == 0
                    and done < self.max_iter
                ):
                    events.write_eval(iteration, self.evaluate(cfg, self.model))
            ran = self.max_iter - self.start_iter
            if ran > 0:
                # detectron2's summary line: wall time of the loop, checkpoints and periodic evals included
                elapsed = time.perf_counter() - train_start
                logger.info(
                    "overall training speed: %d iterations in %s (%.4f s / it)",
                    ran,
                    datetime.timedelta(seconds=round(elapsed)),
                    elapsed / ran,
                )
            if self.start_iter < self.max_iter or not os.path.isfile(
                os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
            ):
                self.save("model_final", self.max_iter - 1)
            results = self.evaluate(cfg, self.model)
            events.write_eval(self.max_iter - 1, results)
        finally:
            events.close()
            self.release_output_dir()
        return results

    def run_step(
        self, loader: Iterator[list[dict]], iteration: int
    ) -> tuple[dict[str, float], float]:
        """One optimizer step over ``accum_steps`` batches.

        Returns:
            (losses averaged over ranks and accumulation steps, seconds spent waiting for data)
        """
        cfg = self.cfg
        amp = cfg.SOLVER.AMP.ENABLED
        sums: dict[str, float] = {}
        data_time = 0.0
        for micro in range(self.accum_steps):
            t0 = time.perf_counter()
            batch = self._isolated(lambda: next(loader))
            data_time += time.perf_counter() - t0
            last = micro == self.accum_steps - 1
            sync = contextlib.nullcontext()
            if not last and isinstance(self.model, nn.parallel.DistributedDataParallel):
                sync = self.model.no_sync()  # all-reduce gradients only on the last pass
            with sync:
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=amp):
                    loss_dict = self.model(batch)
                total = self._check_losses(loss_dict, iteration)
                self.grad_scaler.scale(total / self.accum_steps).backward()
            reduced = reduce_dict({k: v.detach() for k, v in loss_dict.items()})
            self._raise_if_not_finite(reduced, iteration)
            for name, value in reduced.items():
                sums[name] = sums.get(name, 0.0) + float(value) / self.accum_steps
        if self.grad_scaler.is_enabled():
            self.grad_scaler.unscale_(self.optimizer)
        clip_gradients(cfg, unwrap_model(self.model).parameters())
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return sums, data_time

    @staticmethod
    def _isolated(fn):
        """Runs ``fn`` without letting it advance the global torch CPU generator.

        torch's DataLoader draws its base seed from that generator when an iterator starts (which
        the loader may do lazily, on its first batch); the data pipeline's randomness is a function
        of (SEED, position) anyway, and keeping the model's random stream apart from it is what
        makes a resumed run continue exactly.
        """
        with torch.random.fork_rng(devices=[]):
            return fn()

    @staticmethod
    def _check_losses(loss_dict: Any, iteration: int) -> torch.Tensor:
        if not isinstance(loss_dict, dict) or not loss_dict:
            raise TypeError(
                f"the model returned {type(loss_dict).__name__} at iteration {iteration}; in training "
                "mode it must return a non-empty dict of scalar losses"
            )
        for name, value in loss_dict.items():
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                raise TypeError(
                    f"loss {name!r} must be a scalar tensor, got {type(value).__name__}"
                )
        return sum(v.float() for v in loss_dict.values())

    def _raise_if_not_finite(self, reduced: dict[str, torch.Tensor], iteration: int) -> None:
        # The values are averaged over ranks, so every rank sees the same verdict and stops.
        bad = {name: float(v) for name, v in reduced.items() if not torch.isfinite(v).all()}
        if bad:
            terms = ", ".join(f"{name} = {value}" for name, value in sorted(bad.items()))
            last = (
                self.checkpointer.last_checkpoint_path()
                if os.path.isdir(self.cfg.OUTPUT_DIR)
                else None
            )
            raise FloatingPointError(
                f"non-finite loss at iteration {iteration}: {terms}; training stopped before the "
                f"optimizer step" + (f" (last good checkpoint: {last})" if last else "")
            )

    def _reported_lr(self) -> float:
        # The group holding the most parameters (the head's, for a backbone multiplier < 1).
        group = max(self.optimizer.param_groups, key=lambda g: len(g["params"]))
        return float(group["lr"])

    def save(self, name: str, iteration: int) -> None:
        """Writes a checkpoint on rank 0 holding every rank's RNG state (collective call)."""
        rng_states = all_gather(capture_rng_state())
        if is_main_process():
            self.checkpointer.save(name, iteration, rng_states)
