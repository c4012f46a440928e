"""A tiny real model and a synthetic data stream for engine tests (CPU, milliseconds per step).

``TinyTestModel`` consumes the shared batch format (list of sample dicts) and returns losses in
training mode and per-image predictions (boxes, scores, labels, masks at the original size) in
eval mode. ``synthetic_train_loader`` yields per-rank batches that depend only on
(SEED, iteration, rank), like the real loader.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from idip.data.build import grad_accum_steps, train_batch_size_per_rank
from idip.engine.trainer import Trainer
from idip.modeling.build import register_meta_arch
from idip.utils.distributed import get_rank, get_world_size

NUM_CLASSES = 4  # as many as the shapes dataset has
CLASS_COLORS = torch.tensor(
    [[220, 40, 40], [40, 200, 40], [40, 40, 220], [220, 220, 40]], dtype=torch.uint8
)


@register_meta_arch("TinyTestModel")
class TinyTestModel(nn.Module):
    """conv -> GroupNorm -> ReLU -> global pool -> dropout -> linear (class logits + one box)."""

    def __init__(self, cfg):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU())
        self.dropout = nn.Dropout(0.25)  # draws from the torch RNG: exercises RNG restore on resume
        self.head = nn.Linear(8, NUM_CLASSES + 4)
        self.register_buffer("pixel_mean", torch.tensor(cfg.MODEL.PIXEL_MEAN).view(3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(cfg.MODEL.PIXEL_STD).view(3, 1, 1), False)
        self.nan_at_call = -1  # tests set this to make loss_box NaN on that forward call
        self.calls = 0

    def _features(self, batch):
        device = self.pixel_mean.device
        images = [(s["image"].to(device).float() - self.pixel_mean) / self.pixel_std for s in batch]
        h = max(i.shape[1] for i in images)
        w = max(i.shape[2] for i in images)
        padded = torch.stack([F.pad(i, (0, w - i.shape[2], 0, h - i.shape[1])) for i in images])
        feats = self.backbone(padded).mean(dim=(2, 3))
        return self.head(self.dropout(feats))

    def forward(self, batch):
        out = self._features(batch)
        logits, box = out[:, :NUM_CLASSES], out[:, NUM_CLASSES:].sigmoid()
        if self.training:
            self.calls += 1
            device = out.device
            target_cls = torch.stack([s["instances"]["classes"][0] for s in batch]).to(device)
            sizes = torch.tensor(
                [[s["image"].shape[2], s["image"].shape[1]] * 2 for s in batch], device=device
            )
            target_box = torch.stack([s["instances"]["boxes"][0] for s in batch]).to(device) / sizes
            loss_box = F.l1_loss(box, target_box)
            if self.calls == self.nan_at_call:
                loss_box = loss_box * float("nan")
            return {"loss_cls": F.cross_entropy(logits, target_cls), "loss_box": loss_box}
        results = []
        for sample, lg, bx in zip(batch, logits, box):
            H, W = sample["height"], sample["width"]
            scale = torch.tensor([W, H, W, H], dtype=bx.dtype, device=bx.device)
            xyxy = bx.view(1, 4) * scale
            xyxy = torch.cat(
                [torch.minimum(xyxy[:, :2], xyxy[:, 2:]), torch.maximum(xyxy[:, :2], xyxy[:, 2:])],
                1,
            )
            score, label = lg.softmax(0).max(0)
            ys = torch.arange(H, device=bx.device).view(H, 1)
            xs = torch.arange(W, device=bx.device).view(1, W)
            x0, y0, x1, y1 = xyxy[0]
            mask = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
            results.append(
                {
                    "boxes": xyxy,
                    "scores": score.view(1),
                    "labels": label.view(1),
                    "masks": mask[None],
                }
            )
        return results


def make_sample(seed: int, image_id: int = 0, height: int = 24, width: int = 32) -> dict:
    """One synthetic sample: a coloured rectangle (its class) on a noisy background."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 60, (3, height, width), generator=g, dtype=torch.uint8)
    cls = int(torch.randint(0, NUM_CLASSES, (1,), generator=g))
    x0 = int(torch.randint(0, width // 2, (1,), generator=g))
    y0 = int(torch.randint(0, height // 2, (1,), generator=g))
    x1 = x0 + int(torch.randint(4, width // 2, (1,), generator=g))
    y1 = y0 + int(torch.randint(4, height // 2, (1,), generator=g))
    image[:, y0:y1, x0:x1] = CLASS_COLORS[cls].view(3, 1, 1)
    mask = torch.zeros(1, height, width, dtype=torch.bool)
    mask[:, y0:y1, x0:x1] = True
    return {
        "image": image,
        "height": height,
        "width": width,
        "image_id": image_id,
        "file_name": f"synthetic_{seed}.png",
        "instances": {
            "boxes": torch.tensor([[x0, y0, x1, y1]], dtype=torch.float32),
            "classes": torch.tensor([cls], dtype=torch.int64),
            "masks": mask,
        },
    }


def synthetic_train_loader(cfg, start_iter: int = 0):
    """Infinite per-rank batches (one per forward pass, GRAD_ACCUM_STEPS per iteration) from
    iteration ``start_iter`` on; batch content = f(SEED, batch index, rank, slot)."""
    per_rank = train_batch_size_per_rank(cfg)
    rank, world = get_rank(), get_world_size()
    micro = start_iter * grad_accum_steps(cfg)
    while True:
        base = ((cfg.SEED * 1_000_003 + micro) * world + rank) * per_rank
        yield [make_sample(base + i, image_id=base + i) for i in range(per_rank)]
        micro += 1


class TinyTrainer(Trainer):
    """The real Trainer, fed by the synthetic loader."""

    def build_train_loader(self, cfg, start_iter):
        return synthetic_train_loader(cfg, start_iter)


def tiny_cfg_opts(output_dir: str, max_iter: int = 4, **extra) -> list[str]:
    """Overrides that make a CPU run of TinyTestModel take well under a second."""
    opts = {
        "MODEL.META_ARCHITECTURE": "TinyTestModel",
        "MODEL.DEVICE": "cpu",
        "SOLVER.IMS_PER_BATCH": 4,
        "SOLVER.BASE_LR": 0.01,
        "SOLVER.MAX_ITER": max_iter,
        "SOLVER.STEPS": (max_iter + 100,),
        "SOLVER.WARMUP_ITERS": 2,
        "SOLVER.CHECKPOINT_PERIOD": 2,
        "DATASETS.TRAIN": ("synthetic",),
        "DATASETS.TEST": (),
        "DATALOADER.NUM_WORKERS": 0,
        "SEED": 7,
        "DETERMINISTIC": True,
        "LOG_PERIOD": 1,
        "OUTPUT_DIR": output_dir,
    }
    opts.update(extra)
    out = []
    for key, value in opts.items():
        out += [key, repr(value) if isinstance(value, tuple) else str(value)]
    return out


def torchrun_failure(proc) -> str:
    """The part of a failed torchrun's output worth reading in an assertion message.

    The workers run with PYTHONFAULTHANDLER=1, so a worker that aborts (SIGABRT: a rare
    "terminate called without an active exception" at exit, seen in CI but not reproduced in 140
    runs of the same command) dumps every thread's Python stack while the interpreter is still up;
    that dump comes first, then the output tails. No dump at all means the abort came after the
    interpreter had shut down (a C++ destructor at process exit).
    """
    err = proc.stderr
    start = err.find("Fatal Python error")
    dump = err[start : start + 6000] + "\n...\n" if start >= 0 else ""
    return dump + proc.stdout[-3000:] + err[-3000:]
