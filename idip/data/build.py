"""Training and test data loaders.

Exact resume: the images of training batch k and the random augmentation of each of its samples
are functions of (cfg.SEED, the sample's global position in the stream) only, so
``build_train_loader(cfg, start_iter=k)`` yields what an uninterrupted run yields from iteration k
on, with any number of loader workers. One iteration is SOLVER.GRAD_ACCUM_STEPS loader batches
(one per forward pass), so the loader starts at batch ``k * GRAD_ACCUM_STEPS``.
"""

from __future__ import annotations

import logging
import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..config import ConfigError
from ..utils.distributed import get_rank, get_world_size
from .coco import count_crowd_annotations, filter_empty_annotations, load_coco_json
from .datasets import get_dataset, register_from_cfg
from .errors import DatasetError
from .image_io import ImageReadError, TooManyUnreadableImagesError
from .mapper import DatasetMapper
from .samplers import InferenceSampler, TrainBatchSampler, TrainingSampler, mix_seed
from .serialized import SerializedList

logger = logging.getLogger(__name__)

_AUGMENT_STREAM = 0xA46  # keeps augmentation seeds apart from the order seeds
_REPLACE_STREAM = 0x4E9
_MAX_ATTEMPTS = 20  # reads per training sample before giving up (each failure draws another image)


def grad_accum_steps(cfg) -> int:
    """SOLVER.GRAD_ACCUM_STEPS, where 0 (automatic) means 1."""
    steps = int(cfg.SOLVER.GRAD_ACCUM_STEPS)
    if steps < 0:
        raise ConfigError(f"config key 'SOLVER.GRAD_ACCUM_STEPS' must be >= 0, got {steps}")
    return max(steps, 1)


def train_batch_size_per_rank(cfg) -> int:
    """Images per forward pass on one rank: SOLVER.IMS_PER_BATCH / world size / accumulation steps.

    Raises:
        ConfigError: SOLVER.IMS_PER_BATCH does not split evenly over the ranks and steps.
    """
    total, world, steps = int(cfg.SOLVER.IMS_PER_BATCH), get_world_size(), grad_accum_steps(cfg)
    if total <= 0 or total % (world * steps):
        raise ConfigError(
            f"config key 'SOLVER.IMS_PER_BATCH' is {total}, which does not split evenly over "
            f"{world} process(es) x {steps} accumulation step(s) (SOLVER.GRAD_ACCUM_STEPS)"
        )
    return total // (world * steps)


def test_batch_size(cfg) -> int:
    """TEST.IMS_PER_BATCH, checked (training checks it before the first iteration)."""
    batch_size = cfg.TEST.IMS_PER_BATCH
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ConfigError(
            f"config key 'TEST.IMS_PER_BATCH' must be an integer > 0, got {batch_size!r}"
        )
    return batch_size


def num_loader_workers(cfg) -> int:
    workers = cfg.DATALOADER.NUM_WORKERS
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ConfigError(
            f"config key 'DATALOADER.NUM_WORKERS' must be an integer >= 0, got {workers!r}"
        )
    return workers


def _data_seed(cfg) -> int:
    return int(cfg.SEED) if int(cfg.SEED) >= 0 else 0


def _load_records(
    names, filter_empty: bool, log_crowd: bool = False
) -> tuple[list[dict], list[str]]:
    records: list[dict] = []
    classes: list[str] | None = None
    first = None
    for name in names:
        info = get_dataset(name)  # raises for missing files before anything else happens
        dataset_records, categories = load_coco_json(info.json_file, info.image_root, name)
        if classes is None:
            classes, first = categories.names, name
        elif categories.names != classes:
            raise DatasetError(
                f"datasets '{first}' and '{name}' have different classes ({classes} vs "
                f"{categories.names}); they cannot be trained on together"
            )
        if log_crowd:
            crowd, total = count_crowd_annotations(dataset_records)
            logger.info(
                "%s: %s crowd %s (of %s) excluded from the training targets",
                name,
                f"{crowd:,}",
                "annotation" if crowd == 1 else "annotations",
                f"{total:,}",
            )
        if filter_empty:
            dataset_records = filter_empty_annotations(dataset_records, name)
        records.extend(dataset_records)
    return records, classes or []


class _TrainDataset(Dataset):
    """Maps ``(dataset_index, global_position)`` to ``(sample, failures)``.

    An unreadable image is replaced by another one drawn from ``(seed, position, attempt)``, so
    the replacement is deterministic too; ``failures`` lists ``(file_name, reason)`` of the images
    that failed for this sample (the main process counts and reports them).
    """

    def __init__(self, records: SerializedList, mapper: DatasetMapper, seed: int):
        self.records, self.mapper, self.seed = records, mapper, seed

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, item: tuple[int, int]):
        index, position = item
        failures: list[tuple[str, str]] = []
        for attempt in range(_MAX_ATTEMPTS):
            rng = random.Random(mix_seed(_AUGMENT_STREAM, self.seed, position, attempt))
            record = self.records[index]
            try:
                return self.mapper(record, rng), failures
            except ImageReadError as exc:
                failures.append((record["file_name"], exc.reason))
                index = random.Random(
                    mix_seed(_REPLACE_STREAM, self.seed, position, attempt)
                ).randrange(len(self.records))
        reasons = dict(failures)
        raise TooManyUnreadableImagesError(
            f"{_MAX_ATTEMPTS} images in a row failed to load for one training sample: "
            + "; ".join(f"'{f}' ({reasons[f]})" for f in sorted(reasons))
        )


def _collate_train(batch):
    samples = [sample for sample, _ in batch]
    failures = [failure for _, fails in batch for failure in fails]
    return samples, failures


def _collate_test(batch):
    return list(batch)


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)  # the loader's workers share the machine with the model


class TrainLoader:
    """Infinite iterator of per-rank training batches (``list[dict]``).

    Unreadable images are skipped with a warning naming the file (another sample is drawn);
    training stops with an error once more than ``max_bad_fraction`` of the dataset's images
    (distinct files) failed.
    """

    def __init__(
        self, loader: DataLoader, num_images: int, max_bad_fraction: float, batch_size: int
    ):
        self.loader, self.num_images, self.max_bad_fraction = loader, num_images, max_bad_fraction
        self.batch_size = batch_size
        self.bad_files: dict[str, str] = {}
        self._iterator = None

    def __iter__(self) -> "TrainLoader":
        return self

    def __next__(self) -> list[dict]:
        if self._iterator is None:
            self._iterator = iter(self.loader)
        samples, failures = next(self._iterator)
        for file_name, reason in failures:
            if file_name in self.bad_files:
                continue
            self.bad_files[file_name] = reason
            logger.warning(
                "skipped unreadable training image '%s' (%s); drew another image instead",
                file_name,
                reason,
            )
            if len(self.bad_files) > self.max_bad_fraction * self.num_images:
                raise TooManyUnreadableImagesError(
                    f"{len(self.bad_files)} of {self.num_images} training images could not be "
                    "read, more than "
                    f"DATALOADER.MAX_BAD_IMAGE_FRACTION={self.max_bad_fraction}; first ones: "
                    + "; ".join(f"'{f}' ({why})" for f, why in list(self.bad_files.items())[:5])
                )
        return samples


def build_train_loader(cfg, start_iter: int = 0) -> TrainLoader:
    """Builds the training loader of this rank, starting at iteration ``start_iter``.

    Each ``next()`` gives the batch of one forward pass (train_batch_size_per_rank images); an
    iteration with gradient accumulation takes GRAD_ACCUM_STEPS of them, so the first batch
    yielded is batch ``start_iter * GRAD_ACCUM_STEPS`` of an uninterrupted run.

    Reads DATASETS.TRAIN (several datasets are concatenated; their classes must agree), INPUT.*,
    DATALOADER.*, SOLVER.IMS_PER_BATCH / GRAD_ACCUM_STEPS and SEED (< 0 counts as 0 here: the
    engine is expected to set a concrete seed).

    Raises:
        FileNotFoundError: an annotation file or image folder is missing (message names it).
        ValueError: a bad config value (message names the key).
    """
    if start_iter < 0:
        raise ValueError(f"build_train_loader: 'start_iter' must be >= 0, got {start_iter}")
    register_from_cfg(cfg)
    names = list(cfg.DATASETS.TRAIN)
    if not names:
        raise ConfigError("DATASETS.TRAIN is empty: name at least one dataset to train on")
    batch_size = train_batch_size_per_rank(cfg)
    mapper = DatasetMapper.from_config(cfg, is_train=True)
    records, _ = _load_records(names, bool(cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS), log_crowd=True)
    if not records:
        raise DatasetError(f"no training images with usable annotations in {names}")
    seed = _data_seed(cfg)
    sampler = TrainingSampler(
        len(records), seed, shuffle=True, rank=get_rank(), world_size=get_world_size()
    )
    group_ids = None
    if cfg.DATALOADER.ASPECT_RATIO_GROUPING:
        group_ids = np.array(
            [0 if r["width"] >= r["height"] else 1 for r in records], dtype=np.int64
        )
    batch_sampler = TrainBatchSampler(
        sampler, batch_size, group_ids=group_ids, start_batch=start_iter * grad_accum_steps(cfg)
    )
    num_workers = num_loader_workers(cfg)
    loader = DataLoader(
        _TrainDataset(SerializedList(records), mapper, seed),
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        collate_fn=_collate_train,
        worker_init_fn=_worker_init if num_workers > 0 else None,
    )
    logger.info(
        "training loader: %d images from %s, %d per rank and forward pass, %d passes per "
        "iteration, starting at iteration %d",
        len(records),
        names,
        batch_size,
        grad_accum_steps(cfg),
        start_iter,
    )
    return TrainLoader(
        loader, len(records), float(cfg.DATALOADER.MAX_BAD_IMAGE_FRACTION), batch_size
    )


class _TestDataset(Dataset):
    def __init__(self, records: SerializedList, mapper: DatasetMapper):
        self.records, self.mapper = records, mapper

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        return self.mapper(self.records[index], random.Random(0))  # no randomness at test time


def build_test_loader(cfg, dataset_name: str) -> DataLoader:
    """Builds the loader of one dataset for inference: every image exactly once over all ranks
    (contiguous shards), batches of TEST.IMS_PER_BATCH, samples without "instances".

    An unreadable image raises :class:`~idip.data.image_io.ImageReadError` naming the file.
    """
    register_from_cfg(cfg)
    records, _ = _load_records([dataset_name], filter_empty=False)
    sampler = InferenceSampler(len(records), get_rank(), get_world_size())
    batch_size = test_batch_size(cfg)
    num_workers = num_loader_workers(cfg)
    return DataLoader(
        _TestDataset(SerializedList(records), DatasetMapper.from_config(cfg, is_train=False)),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=_collate_test,
        worker_init_fn=_worker_init if num_workers > 0 else None,
    )
