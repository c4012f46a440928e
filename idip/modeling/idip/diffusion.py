"""IDIP's box diffusion: the cosine schedule, the training corruption and the DDIM sampler.

Boxes live in two forms: the diffusion signal ``x`` (normalised cxcywh scaled to [-1, 1], no
signal scale, as in IDIP) and absolute xyxy boxes in the image (what the head sees). Every
conversion between them and every noising step is one :mod:`idip.ops` kernel call over the whole
batch (``box_q_sample``, ``box_ddim_step``); the authors' code does the same one image at a time.

Facts followed (leftthomas/IDIP, ``idip/head.py`` and ``idip/detector.py``):
    * cosine schedule of Improved DDPM in float64, betas clipped to 0.999, T = 1000;
    * GT boxes -> normalised cxcywh; padded with placeholders ``cxcywh(to_abs(randn))``, or a
      random subset (kept in the original order) when there are more than ``num_proposals``;
      ``x_start = boxes * 2 - 1``; one ``t ~ U{0..T-1}`` per image;
    * sampling from ``randn`` boxes over ``reversed(linspace(-1, T-1, steps+1).long())``; each
      step runs the head, keeps the boxes whose best class score is above the threshold, takes a
      DDIM step and refills the dropped boxes with fresh ``randn``; the last step returns the
      head's output as is (no ensembling across steps).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from ..box_ops import box_xyxy_to_cxcywh
from ..op_library import op_library

Head = Callable[[Tensor, Tensor], tuple[Tensor, Tensor, Any]]


def cosine_beta_schedule(timesteps: int = 1000, s: float = 0.008) -> Tensor:
    """Betas of the cosine schedule (Nichol & Dhariwal), as DiffusionDet and IDIP compute them.

    ``f(t) = cos(((t / T) + s) / (1 + s) * pi / 2) ** 2``, ``alphas_cumprod = f(t) / f(0)``,
    ``beta_t = 1 - alphas_cumprod[t + 1] / alphas_cumprod[t]`` clipped to [0, 0.999], all in float64.

    Args:
        timesteps: number of diffusion steps T.
        s: small offset that keeps beta_0 away from 0.

    Returns:
        [T] float64 betas.
    """
    if timesteps < 1:
        raise ValueError(f"cosine_beta_schedule: timesteps must be >= 1, got {timesteps}")
    t = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64)
    f = torch.cos(((t / timesteps) + s) / (1 + s) * math.pi * 0.5) ** 2
    alphas_cumprod = f / f[0]
    betas = 1 - alphas_cumprod[1:] / alphas_cumprod[:-1]
    return betas.clamp(0, 0.999)


class DiffusionSchedule(nn.Module):
    """The noise schedule: betas and cumulative alphas (float64 buffers that follow ``.to()``).

    The buffers are not persistent: they are a function of ``num_timesteps`` and ``s`` and stay
    out of checkpoints.

    Attributes:
        num_timesteps: T.
        betas: [T] float64.
        alphas: [T] float64, ``1 - betas``.
        alphas_cumprod: [T] float64, cumulative product of ``alphas``.
        alphas_cumprod_host: the same values as Python floats (the sampler's per-step scalars,
            read without touching the device).
    """

    def __init__(self, num_timesteps: int = 1000, s: float = 0.008):
        super().__init__()
        self.num_timesteps = int(num_timesteps)
        betas = cosine_beta_schedule(self.num_timesteps, s)
        alphas = 1 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        self.register_buffer("betas", betas, persistent=False)
        self.register_buffer("alphas", alphas, persistent=False)
        self.register_buffer("alphas_cumprod", alphas_cumprod, persistent=False)
        self.alphas_cumprod_host: list[float] = alphas_cumprod.tolist()
        self._betas_host: list[float] = betas.tolist()
        self._alphas_host: list[float] = alphas.tolist()

    def _apply(self, fn, recurse=True):
        # Follow device moves, but stay float64 through model.half() / .to(dtype): at t = T-1
        # alphas_cumprod is ~2e-9, which half precision rounds to 0.
        super()._apply(fn, recurse)
        for name in ("betas", "alphas", "alphas_cumprod"):
            buf = getattr(self, name)
            if buf.dtype != torch.float64:
                exact = {
                    "betas": self._betas_host,
                    "alphas": self._alphas_host,
                    "alphas_cumprod": self.alphas_cumprod_host,
                }[name]
                setattr(self, name, torch.tensor(exact, dtype=torch.float64, device=buf.device))
        return self

    def extra_repr(self) -> str:
        return f"num_timesteps={self.num_timesteps}"


def _pure_noise_boxes(noise: Tensor, image_size: Tensor, ops) -> Tensor:
    """``to_abs(noise) * image_size`` as one kernel: q_sample with alphas_cumprod = 0 is the noise."""
    zeros = torch.zeros_like(noise)
    t = torch.zeros(noise.shape[0], dtype=torch.int64, device=noise.device)
    alpha_zero = torch.zeros(1, dtype=torch.float64, device=noise.device)
    return ops.box_q_sample(zeros, noise, t, alpha_zero, image_size)[1]


def _check_image_size(image_size: Tensor, where: str) -> Tensor:
    if image_size.dim() != 2 or image_size.shape[1] != 4:
        raise ValueError(
            f"{where}: image_size must be [B, 4] (w, h, w, h), got {tuple(image_size.shape)}"
        )
    return image_size if image_size.is_floating_point() else image_size.float()


def prepare_diffusion_targets(
    gt_boxes: list[Tensor],
    image_size: Tensor,
    num_proposals: int,
    schedule: DiffusionSchedule,
    generator: torch.Generator | None = None,
    use_reference_ops: bool = False,
) -> dict[str, Any]:
    """The training corruption of IDIP for a batch: GT boxes -> padded x_start -> noised boxes.

    Per image: GT boxes are normalised to cxcywh in [0, 1]; if there are fewer than N
    (``num_proposals``) they are followed by placeholder boxes ``cxcywh(to_abs(randn))``; if
    there are more, N of them are drawn at random without replacement (kept in their original
    order). ``x_start = boxes * 2 - 1``, ``t ~ U{0..T-1}``, and one ``box_q_sample`` call gives
    ``x_t`` and the absolute boxes. Random draws, in order: t, placeholders, subsets (one
    ``randperm`` per image with more than N boxes, in image order), noise; the same generator
    state gives the same result on the same device.

    Args:
        gt_boxes: B tensors [G_i, 4] of absolute xyxy GT boxes (G_i may be 0).
        image_size: [B, 4] (w, h, w, h) of each (resized) image; its device is the output device.
        num_proposals: N, boxes per image fed to the head.
        schedule: the noise schedule (its ``alphas_cumprod`` must be on image_size's device).
        generator: random generator on image_size's device, or None for the global one.
        use_reference_ops: run :mod:`idip.ops.reference` instead of the kernels.

    Returns:
        dict with
            ``boxes``: [B, N, 4] absolute xyxy noised boxes (the head's input),
            ``x_t``: [B, N, 4] the noised signal,
            ``t``: [B] int64 diffusion times,
            ``x_start``: [B, N, 4] the clean signal (normalised cxcywh * 2 - 1),
            ``noise``: [B, N, 4] the noise added,
            ``gt_cxcywh``: B tensors [G_i, 4], all GT boxes normalised cxcywh in [0, 1] (losses),
            ``num_gt_in_x_start``: list of B ints, min(G_i, N) (rows 0..G_i-1 of x_start are GT).
    """
    image_size = _check_image_size(image_size, "prepare_diffusion_targets")
    B = image_size.shape[0]
    if len(gt_boxes) != B:
        raise ValueError(
            f"prepare_diffusion_targets: got {len(gt_boxes)} gt_boxes tensors for {B} images"
        )
    if num_proposals < 1:
        raise ValueError(
            f"prepare_diffusion_targets: num_proposals must be >= 1, got {num_proposals}"
        )
    for i, g in enumerate(gt_boxes):
        if g.dim() != 2 or g.shape[1] != 4:
            raise ValueError(
                f"prepare_diffusion_targets: gt_boxes[{i}] must be [G, 4], got {tuple(g.shape)}"
            )
    device, dtype, N = image_size.device, image_size.dtype, num_proposals
    ops = op_library(use_reference_ops)

    t = torch.randint(0, schedule.num_timesteps, (B,), generator=generator, device=device)
    placeholder_noise = torch.randn(B, N, 4, generator=generator, device=device, dtype=dtype)
    unit = torch.ones_like(image_size)
    x_start = box_xyxy_to_cxcywh(_pure_noise_boxes(placeholder_noise, unit, ops))

    counts = [int(g.shape[0]) for g in gt_boxes]
    if sum(counts):
        all_gt = torch.cat([g.to(device=device, dtype=dtype) for g in gt_boxes])
        # Index bookkeeping on the host with numpy (torch's repeat_interleave runs a parallel
        # region per call, costly for such tiny work).
        counts_np = np.asarray(counts, dtype=np.int64)
        offsets_np = np.cumsum(counts_np) - counts_np
        image_of_gt = np.repeat(np.arange(B, dtype=np.int64), counts_np)
        all_cxcywh = box_xyxy_to_cxcywh(
            all_gt / image_size[torch.from_numpy(image_of_gt).to(device)]
        )
        gt_cxcywh = list(all_cxcywh.split(counts))
        # GT rows that enter x_start and the flat [B*N] slots they fill: on the host for images
        # with at most N boxes (all of their boxes, in order), on the device for random subsets.
        in_full = np.repeat(counts_np <= N, counts_np)
        rank = np.arange(len(image_of_gt), dtype=np.int64) - np.repeat(offsets_np, counts_np)
        rows = [torch.from_numpy(np.flatnonzero(in_full)).to(device)]
        slots = [torch.from_numpy(image_of_gt[in_full] * N + rank[in_full]).to(device)]
        for b in np.flatnonzero(counts_np > N).tolist():
            chosen = torch.randperm(counts[b], generator=generator, device=device)[:N].sort().values
            rows.append(chosen + int(offsets_np[b]))
            slots.append(torch.arange(b * N, b * N + N, device=device))
        rows_t, slots_t = torch.cat(rows), torch.cat(slots)
        x_start = (
            x_start.reshape(B * N, 4).index_copy(0, slots_t, all_cxcywh[rows_t]).reshape(B, N, 4)
        )
    else:
        gt_cxcywh = [torch.zeros(0, 4, device=device, dtype=dtype) for _ in range(B)]
    x_start = x_start * 2 - 1

    noise = torch.randn(B, N, 4, generator=generator, device=device, dtype=dtype)
    alphas_cumprod = schedule.alphas_cumprod.to(device)
    x_t, boxes = ops.box_q_sample(x_start, noise, t, alphas_cumprod, image_size)
    return {
        "boxes": boxes,
        "x_t": x_t,
        "t": t,
        "x_start": x_start,
        "noise": noise,
        "gt_cxcywh": gt_cxcywh,
        "num_gt_in_x_start": [min(g, N) for g in counts],
    }


class DDIMSampler:
    """DDIM sampling of boxes with box renewal (IDIP's ``ddim_sample``), batched over images.

    Args:
        schedule: the noise schedule the head was trained with.
        num_steps: sampling steps (head evaluations).
        eta: DDIM stochasticity (1: sigma of DDPM, 0: deterministic DDIM).
        box_renewal: replace the boxes whose best class score is not above the threshold by
            fresh random boxes after every step but the last.
        renewal_threshold: sigmoid score threshold of box renewal.
        use_reference_ops: run :mod:`idip.ops.reference` instead of the kernels.
    """

    def __init__(
        self,
        schedule: DiffusionSchedule,
        num_steps: int = 3,
        eta: float = 1.0,
        box_renewal: bool = True,
        renewal_threshold: float = 0.5,
        use_reference_ops: bool = False,
    ):
        T = schedule.num_timesteps
        if not 1 <= num_steps <= T:
            raise ValueError(f"DDIMSampler: num_steps must be in [1, {T}], got {num_steps}")
        if eta < 0:
            raise ValueError(f"DDIMSampler: eta must be >= 0, got {eta}")
        self.schedule = schedule
        self.num_steps = int(num_steps)
        self.eta = float(eta)
        self.box_renewal = bool(box_renewal)
        self.renewal_threshold = float(renewal_threshold)
        self.use_reference_ops = bool(use_reference_ops)
        times = torch.linspace(-1, T - 1, self.num_steps + 1).long().flip(0).tolist()
        # (t_now, t_next) pairs, e.g. T=1000, 3 steps: (999, 665), (665, 332), (332, -1).
        self.time_pairs: list[tuple[int, int]] = list(zip(times[:-1], times[1:]))

    @torch.compiler.disable
    def draw_noise(self, B: int, N: int, generator, device, dtype) -> tuple[Tensor, Tensor]:
        """Every random number of one :meth:`sample` call, drawn up front.

        Random generators are objects torch.compile cannot trace, so the draws happen here, in
        one region it leaves out, in the order :meth:`sample` consumes them (each generator
        gives the same numbers as when drawn step by step).

        Returns:
            (x_T [B, N, 4] the initial signal, [S, 2, B, N, 4] the DDIM noise and the renewal
            noise of each of the S = num_steps - 1 steps that have a next step).
        """
        steps = len(self.time_pairs) - 1
        if isinstance(generator, (list, tuple)):
            per_image = []
            for g in generator:
                draws = [torch.randn((N, 4), generator=g, device=device, dtype=dtype)]
                draws += [
                    torch.randn((2, N, 4), generator=g, device=device, dtype=dtype)
                    for _ in range(steps)
                ]
                per_image.append(draws)
            x_t = torch.stack([d[0] for d in per_image])
            if steps == 0:
                return x_t, x_t.new_zeros((0, 2, B, N, 4))
            step_noise = torch.stack(
                [torch.stack([d[1 + s] for d in per_image], dim=1) for s in range(steps)]
            )
            return x_t, step_noise
        x_t = torch.randn((B, N, 4), generator=generator, device=device, dtype=dtype)
        step_noise = [
            torch.randn(2, B, N, 4, generator=generator, device=device, dtype=dtype)
            for _ in range(steps)
        ]
        return x_t, (torch.stack(step_noise) if steps else x_t.new_zeros((0, 2, B, N, 4)))

    @torch.no_grad()
    def sample(
        self,
        head: Head,
        image_size: Tensor,
        num_proposals: int,
        generator: torch.Generator | list[torch.Generator] | None = None,
        noise: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, Any]:
        """Denoises ``num_proposals`` random boxes per image with ``num_steps`` head evaluations.

        Args:
            head: ``head(boxes [B, N, 4] abs xyxy, t [B] int64) -> (class_logits [B, N, K],
                pred_boxes [B, N, 4] abs xyxy, extra)``.
            image_size: [B, 4] (w, h, w, h) of each image; its device is the sampling device.
            num_proposals: N.
            generator: random generator on image_size's device, or None for the global one; or
                a list of B generators, one per image, so that an image's result does not depend
                on the other images of the batch.
            noise: the random numbers to use instead of drawing them, as :meth:`draw_noise`
                returns them: (x_T [B, N, 4], [S, 2, B, N, 4]); the export wrapper passes
                numbers computed from a seed tensor (a generator cannot be exported).

        Returns:
            The head's output at the last step: (class_logits, pred_boxes, extra).
        """
        image_size = _check_image_size(image_size, "DDIMSampler.sample")
        B, N = image_size.shape[0], int(num_proposals)
        device, dtype = image_size.device, image_size.dtype
        ops = op_library(self.use_reference_ops)
        alphas = self.schedule.alphas_cumprod_host

        if isinstance(generator, (list, tuple)) and len(generator) != B:
            raise ValueError(f"DDIMSampler.sample: got {len(generator)} generators for {B} images")
        if noise is None:
            x_t, step_noise = self.draw_noise(B, N, generator, device, dtype)
        else:
            x_t, step_noise = noise
            steps = len(self.time_pairs) - 1
            if tuple(x_t.shape) != (B, N, 4) or tuple(step_noise.shape) != (steps, 2, B, N, 4):
                raise ValueError(
                    f"DDIMSampler.sample: noise must be ([{B}, {N}, 4], [{steps}, 2, {B}, {N}, 4]), "
                    f"got ({list(x_t.shape)}, {list(step_noise.shape)})"
                )
        boxes = _pure_noise_boxes(x_t, image_size, ops)
        output = None
        for step, (t_now, t_next) in enumerate(self.time_pairs):
            t = torch.full((B,), t_now, dtype=torch.int64, device=device)
            output = head(boxes, t)
            if t_next < 0:
                break
            class_logits, pred_boxes = output[0], output[1]
            noise, renew = step_noise[step]
            if self.box_renewal:
                # max over classes commutes with the (monotone) sigmoid: sigmoid on [B, N] only.
                keep = class_logits.amax(dim=-1).sigmoid() > self.renewal_threshold
            else:
                keep = torch.ones(B, N, dtype=torch.bool, device=device)
            x_t, boxes = ops.box_ddim_step(
                x_t,
                pred_boxes.to(dtype),
                image_size,
                alphas[t_now],
                alphas[t_next],
                self.eta,
                keep,
                noise,
                renew,
            )
        return output
