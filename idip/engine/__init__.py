"""idip.engine: training loop, checkpoints, metrics and process-group helpers.

Modules (imported directly, e.g. ``from idip.engine.trainer import Trainer``; this package
imports nothing itself because idip.data and idip.evaluation import ``idip.engine.distributed``):

- ``distributed``: rank helpers, ``all_gather``, ``reduce_dict``, process group from torchrun.
- ``trainer``: ``Trainer`` (DDP, AMP, gradient accumulation, clipping, checkpoints, evaluation).
- ``optim`` / ``lr_scheduler``: per-parameter-group AdamW/SGD, warmup + multistep schedule.
- ``checkpoint``: atomic checkpoint files, exact resume, ``MODEL.WEIGHTS`` loading.
- ``events`` / ``logger``: the log line, metrics.json, tensorboard, log.txt.
- ``evaluate``: COCO evaluation on ``DATASETS.TEST``; ``predictor``: one-image inference (demo).
- ``seeding`` / ``runtime`` / ``cli``: seeds and RNG state, torch flags and batch split, CLI errors.
"""
