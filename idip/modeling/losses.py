"""Loss functions shared by the models: sigmoid focal loss and the two Dice losses."""

from __future__ import annotations

from torch import Tensor
from torch.nn import functional as F


def sigmoid_focal_loss(
    logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """Summed focal loss (Lin et al.) of [N, K] logits against [N, K] {0, 1} targets -> scalar."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss.sum()


def linear_dice_loss(probs: Tensor, targets: Tensor) -> Tensor:
    """Summed Dice loss ``1 - 2 sum(p t) / (sum(p) + sum(t))`` of [K, ...] probabilities against
    targets (IDIP's form; CondInst's :func:`squared_dice_loss` squares p and t below the line)."""
    p = probs.flatten(1)
    t = targets.flatten(1)
    inter = (p * t).sum(dim=1)
    union = p.sum(dim=1) + t.sum(dim=1) + 1e-8
    return (1 - 2 * inter / union).sum()


def squared_dice_loss(scores: Tensor, targets: Tensor, eps: float = 1e-5) -> Tensor:
    """1 - 2 sum(p t) / (sum(p^2) + sum(t^2) + eps) per instance (CondInst's V-Net form; IDIP's
    :func:`linear_dice_loss` does not square).

    Args:
        scores: [N, ...] probabilities.
        targets: [N, ...] {0, 1} masks of the same shape.

    Returns:
        [N] losses.
    """
    n = scores.shape[0]
    p = scores.reshape(n, -1)
    t = targets.reshape(n, -1).to(p.dtype)
    inter = (p * t).sum(dim=1)
    union = (p * p).sum(dim=1) + (t * t).sum(dim=1) + eps
    return 1.0 - 2.0 * inter / union
