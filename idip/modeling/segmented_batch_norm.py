"""Batch normalisation with separate statistics for each segment (image) of one batched tensor."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SegmentedBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training statistics are computed per segment of the batch.

    In training, ``forward(x, segments, num_segments)`` normalises the rows of each segment with
    that segment's own mean and variance, and updates the running statistics as if the segments
    had gone through ``nn.BatchNorm2d`` one after the other, in segment order, skipping empty
    ones: the same numbers as calling an ``nn.BatchNorm2d`` once per segment (IDIP's authors run
    their mask head once per image), in one pass over the batch and without a host
    synchronisation. In eval mode, or without ``segments``, it is ``nn.BatchNorm2d``. The
    parameters and buffers are those of ``nn.BatchNorm2d`` (same checkpoint keys).

    Args of forward:
        x: [K, C, H, W].
        segments: [K] int64 segment (image) index of each row, in [0, num_segments).
        num_segments: number of segments (rows need not be sorted by segment).

    Returns:
        [K, C, H, W].
    """

    def forward(self, x: Tensor, segments: Tensor | None = None, num_segments: int = 0) -> Tensor:
        if segments is None or not self.training or not self.track_running_stats:
            return super().forward(x)
        if self.momentum is None:
            raise ValueError(
                "SegmentedBatchNorm2d needs a momentum (cumulative averaging is not supported)"
            )
        k, c, h, w = x.shape
        seg = segments.to(device=x.device, dtype=torch.long)
        count = torch.bincount(seg, minlength=num_segments).to(x.dtype) * (h * w)  # [S]
        safe = count.clamp(min=1)[:, None]
        sums = x.new_zeros(num_segments, c).index_add_(0, seg, x.sum(dim=(2, 3)))
        mean = sums / safe  # [S, C]
        centred = x - mean[seg][:, :, None, None]
        sq = x.new_zeros(num_segments, c).index_add_(0, seg, centred.square().sum(dim=(2, 3)))
        var = sq / safe  # biased, as used to normalise
        out = centred * torch.rsqrt(var[seg] + self.eps)[:, :, None, None]
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        self._update_running_stats(mean.detach(), var.detach(), count)
        return out

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, count: Tensor) -> None:
        # Sequential updates r <- (1 - m) r + m s_j over the present segments j, in closed form:
        # r_final = (1 - m)^P r + sum_j m (1 - m)^(number of present segments after j) s_j.
        m = float(self.momentum)
        present = count > 0
        after = present.flip(0).cumsum(0).flip(0) - present.to(torch.long)
        weights = torch.where(present, m * (1 - m) ** after.to(mean.dtype), torch.zeros_like(count))
        total = present.sum()
        unbiased = var * (count / (count - 1).clamp(min=1))[:, None]
        keep = (1 - m) ** total.to(mean.dtype)
        self.running_mean.mul_(keep).add_(
            (weights[:, None] * mean).sum(0).to(self.running_mean.dtype)
        )
        self.running_var.mul_(keep).add_(
            (weights[:, None] * unbiased).sum(0).to(self.running_var.dtype)
        )
        self.num_batches_tracked.add_(total)
