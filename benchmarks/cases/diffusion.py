"""IDIP's box diffusion as a whole: the training corruption of a batch and a DDIM sampling loop.

Baselines are written the way the authors' code does it (leftthomas/IDIP ``prepare_diffusion`` /
DiffusionDet ``ddim_sample``): one image at a time, boolean indexing and concatenation for box
renewal, schedule scalars as 0-dim float64 tensors. Ours: ``prepare_diffusion_targets`` and
``DDIMSampler.sample`` (batched, one kernel per noising step). The head is excluded from the
sampling benchmark: it returns a precomputed output.
"""

from __future__ import annotations

import torch
from timing import Case

from idip.modeling.idip.diffusion import DDIMSampler, DiffusionSchedule, prepare_diffusion_targets

NUM_CLASSES = 80


def _to_abs(x: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """IDIP's normed_box_to_abs_box for one image: x [N, 4], size [1, 4]."""
    x = torch.clamp((x + 1) / 2, min=0, max=1)
    x[:, 2:] = torch.clamp(x[:, 2:], min=1e-4, max=1.0)
    cx, cy, w, h = x.unbind(-1)
    xyxy = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)
    return xyxy.clamp(0, 1) * size


def _cxcywh(b: torch.Tensor) -> torch.Tensor:
    x1, y1, x2, y2 = b.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


def authors_training_corruption(gt_boxes, image_size, num_proposals, alphas_cumprod):
    """IDIP's preprocess_target/prepare_diffusion: a Python loop over the images."""
    boxes, ts = [], []
    T = alphas_cumprod.numel()
    for gt, size in zip(gt_boxes, image_size):
        size = size.reshape(1, 4)
        gt = _cxcywh(gt / size)
        num_gt = len(gt)
        if num_gt < num_proposals:
            placeholder = _cxcywh(
                _to_abs(torch.randn(num_proposals - num_gt, 4, device=size.device), 1.0)
            )
            x_start = torch.cat((gt, placeholder), dim=0)
        elif num_gt > num_proposals:
            select = torch.zeros(num_gt, dtype=torch.bool, device=size.device)
            select[torch.randperm(num_gt, device=size.device)[:num_proposals]] = True
            x_start = gt[select]
        else:
            x_start = gt
        x_start = x_start * 2 - 1
        t = torch.randint(0, T, (1,), device=size.device)
        noise = torch.randn_like(x_start)
        x_t = alphas_cumprod[t].sqrt() * x_start + (1 - alphas_cumprod[t]).sqrt() * noise
        boxes.append(_to_abs(x_t.to(torch.float32), size))
        ts.append(t)
    return torch.stack(boxes), torch.stack(ts)


def authors_ddim_sampling(
    logits, pred_boxes, image_size, num_proposals, alphas_cumprod, num_steps, eta=1.0
):
    """DiffusionDet/IDIP ddim_sample per image, the head replaced by precomputed outputs."""
    T = alphas_cumprod.numel()
    outputs = []
    for b in range(image_size.shape[0]):
        size = image_size[b].reshape(1, 4)
        times = reversed(torch.linspace(-1, T - 1, num_steps + 1).long())
        x_t = torch.randn(num_proposals, 4, device=size.device)
        for time_now, time_next in zip(times[:-1], times[1:]):
            boxes = _to_abs(x_t, size)  # the head's input
            pred_logits, pred = logits[b], pred_boxes[b] + 0 * boxes
            x_start = torch.clamp(_cxcywh(pred / size), min=0, max=1) * 2 - 1
            pred_noise = (x_t - alphas_cumprod[time_now].sqrt() * x_start) / (
                1 - alphas_cumprod[time_now]
            ).sqrt()
            if time_next < 0:
                break
            keep = torch.amax(torch.sigmoid(pred_logits), dim=-1) > 0.5
            pred_noise, x_start, x_t = pred_noise[keep], x_start[keep], x_t[keep]
            alpha, alpha_next = alphas_cumprod[time_now], alphas_cumprod[time_next]
            sigma = eta * ((1 - alpha / alpha_next) * (1 - alpha_next) / (1 - alpha)).sqrt()
            c = (1 - alpha_next - sigma**2).sqrt()
            noise = torch.randn_like(x_t)
            x_t = (x_start * alpha_next.sqrt() + c * pred_noise + sigma * noise).to(torch.float32)
            x_t = torch.cat(
                (x_t, torch.randn(num_proposals - len(x_t), 4, device=x_t.device)), dim=0
            )
        outputs.append((pred_logits, pred))
    return outputs


def _image_sizes(B, device):
    g = torch.Generator().manual_seed(1)
    wh = torch.randint(480, 1333, (B, 2), generator=g).float()
    return torch.cat([wh, wh], dim=1).to(device)


def cases(device: str) -> list[Case]:
    schedule = DiffusionSchedule(1000).to(device)
    out = []

    B, N = 16, 300
    counts = [0, 1, 3, 5, 7, 9, 12, 15, 20, 25, 30, 50, 80, 120, 250, 420]

    def setup_corruption():
        g = torch.Generator().manual_seed(0)
        size = _image_sizes(B, device)
        gts = []
        for count, s in zip(counts, size.cpu()):
            xy = torch.rand(count, 2, generator=g) * s[:2] * 0.7
            wh = torch.rand(count, 2, generator=g) * s[:2] * 0.3 + 1
            gts.append(torch.cat([xy, xy + wh], 1).to(device))
        return gts, size

    out.append(
        Case(
            name=f"diffusion training corruption (B={B}, N={N}, G=0..420)",
            group="diffusion",
            pass_kind="fwd",
            setup=setup_corruption,
            impls={
                "reference": lambda a: authors_training_corruption(
                    a[0], a[1], N, schedule.alphas_cumprod
                ),
                "ours": lambda a: prepare_diffusion_targets(a[0], a[1], N, schedule),
            },
            note="IDIP's per-image prepare_diffusion vs prepare_diffusion_targets (one box_q_sample)",
        )
    )

    steps = 3
    for B in (1, 8):

        def setup_sampling(B=B):
            g = torch.Generator().manual_seed(0)
            size = _image_sizes(B, device)
            # about half of the boxes score above the renewal threshold
            logits = torch.randn(B, N, NUM_CLASSES, generator=g) - 2.4
            xy = torch.rand(B, N, 2, generator=g) * size[:, None, :2].cpu() * 0.7
            wh = torch.rand(B, N, 2, generator=g) * size[:, None, :2].cpu() * 0.3
            pred = torch.cat([xy, xy + wh], -1)
            return logits.to(device), pred.to(device), size

        sampler = DDIMSampler(schedule, num_steps=steps, eta=1.0)

        def ours(a, sampler=sampler):
            logits, pred, size = a
            return sampler.sample(lambda boxes, t: (logits, pred + 0 * boxes, None), size, N)

        out.append(
            Case(
                name=f"diffusion {steps}-step DDIM sampling, head excluded (B={B}, N={N})",
                group="diffusion",
                pass_kind="fwd",
                setup=setup_sampling,
                impls={
                    "reference": lambda a, B=B: authors_ddim_sampling(
                        a[0], a[1], a[2], N, schedule.alphas_cumprod, steps
                    ),
                    "ours": ours,
                },
                note="DiffusionDet/IDIP ddim_sample per image (Python renewal loop) vs DDIMSampler "
                "(box_ddim_step); eta=1, renewal threshold 0.5; head = precomputed output "
                "(+0*boxes, the same in both); about half of the boxes renewed per step",
            )
        )
    return out
