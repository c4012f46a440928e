"""idip.engine: training loop, checkpoints, metrics; what train.py, eval.py and demo.py run.

Modules (imported directly, e.g. ``from idip.engine.trainer import Trainer``; process-group
helpers are in ``idip.utils.distributed``):

- ``trainer``: ``Trainer`` (DDP, AMP, gradient accumulation, clipping, checkpoints, evaluation).
- ``optim`` / ``lr_scheduler``: per-parameter-group AdamW/SGD, warmup + multistep schedule.
- ``checkpoint``: atomic checkpoint files, exact resume, ``MODEL.WEIGHTS`` loading.
- ``events`` / ``logger``: the log line, metrics.json, tensorboard, log.txt.
- ``evaluate``: COCO evaluation on ``DATASETS.TEST``; ``predictor``: one-image inference (demo).
- ``seeding`` / ``runtime`` / ``cli``: seeds and RNG state, torch flags and class-count check, CLI
  errors.
"""
