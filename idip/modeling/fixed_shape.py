"""Static-shape building blocks of the export wrappers (:mod:`idip.modeling.export`).

An exported program (torch.export, ONNX) wants every tensor shape fixed by the input shapes. The
eager models select detections by thresholding (a data-dependent count) and draw their initial
IDIP boxes from a ``torch.Generator`` (an object no exporter can record). These helpers give the
same detections at a fixed size D, with a ``valid`` flag per row, and random numbers computed
from a seed *tensor*.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

# The counter-based generator works modulo this Mersenne prime: every intermediate value stays
# below 2**31, so a product of two of them stays below 2**62 and never overflows int64 — in
# PyTorch and in ONNX, which has no unsigned 64-bit wrap-around arithmetic to rely on either.
_PRIME = 2**31 - 1
# Rounds of the mixing function: (multiplier, increment) of the affine step of each round.
_ROUNDS = (
    (1_540_483_477, 1_013_904_223),
    (668_265_261, 1_442_695_041),
    (374_761_393, 1_103_515_245),
    (1_640_531_527, 12_345),
)
_LOW_BITS = 2**16  # the nonlinear step multiplies by (low 16 bits + offset)
_OFFSET = 2_654_435_769 % _PRIME
_KEY_SALT = 1_779_033_703  # mixed into the seed so that seed 0 is no fixed point
_UNIFORM_BITS = 2**24  # uniforms carry 24 bits: exact in float32


def _mix(x: Tensor) -> Tensor:
    """A hash of int64 values in [0, 2**31 - 1) onto the same range (elementwise).

    Each round is an affine step modulo the prime followed by a multiplication with a value
    taken from the low bits of the state, which makes the map nonlinear (an affine map alone
    would turn consecutive counters into a lattice). Only ``*``, ``+`` and ``%`` on int64: the
    same integers in eager PyTorch, in an exported program and in ONNX Runtime.
    """
    for multiplier, increment in _ROUNDS:
        x = (x * multiplier + increment) % _PRIME
        x = (x * (x % _LOW_BITS + _OFFSET)) % _PRIME
    return x


def counter_uniform(seed: Tensor, count: int) -> Tensor:
    """``count`` uniform numbers in (0, 1) that are a function of ``seed`` alone.

    Number i is ``mix(mix(i + 1) XOR key)`` with ``key = mix((seed + salt) mod p)``, read as 24
    bits (``(bits + 0.5) / 2**24``, never 0 or 1). Seeds are taken modulo p = 2**31 - 1.

    Args:
        seed: int64 [1] (or a 0-d tensor).
        count: how many numbers.

    Returns:
        [count] float32.
    """
    key = _mix((seed.reshape(1).to(torch.int64) + _KEY_SALT) % _PRIME)
    counters = torch.arange(1, count + 1, dtype=torch.int64, device=seed.device)
    # XOR instead of adding the key: with an addition, two seeds would give shifted copies of
    # one stream.
    x = _mix(torch.bitwise_xor(_mix(counters), key) % _PRIME)
    bits = x % _UNIFORM_BITS
    return (bits.to(torch.float32) + 0.5) / _UNIFORM_BITS


def counter_normal(seed: Tensor, count: int) -> Tensor:
    """``count`` standard normal numbers from ``seed`` (Box-Muller on :func:`counter_uniform`).

    Args:
        seed: int64 [1].
        count: how many numbers.

    Returns:
        [count] float32, |z| < 5.8 (the smallest uniform is 2**-25).
    """
    u = counter_uniform(seed, 2 * count).reshape(count, 2)
    radius = torch.sqrt(-2.0 * torch.log(u[:, 0]))
    return radius * torch.cos((2.0 * math.pi) * u[:, 1])


def pad_indices(keep: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """The first ``size`` entries of a data-dependent index list, padded to exactly ``size``.

    Args:
        keep: [M] int64 (M unknown when traced, e.g. an NMS result).
        size: D.

    Returns:
        indices [D] int64 (padding rows point at index 0) and present [D] bool (False on the
        padding).
    """
    keep = keep[:size]
    count = keep.shape[0]
    # Tells the tracer that the padding amount below is not negative (count is min(M, D)).
    torch._check(count <= size)
    present = torch.arange(size, device=keep.device) < count
    return F.pad(keep, (0, size - count)), present


def valid_first(valid: Tensor) -> Tensor:
    """[D] permutation that moves the ``valid`` rows to the front, each group in its order.

    The sort keys are all distinct (row index, plus D for the invalid rows), so the result does
    not depend on how a sort breaks ties: no stable sort needed, in PyTorch or in ONNX.
    """
    d = valid.shape[0]
    rows = torch.arange(d, device=valid.device)
    return torch.argsort(torch.where(valid, rows, rows + d))
