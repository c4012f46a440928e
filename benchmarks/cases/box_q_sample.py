"""box_q_sample alone (the training corruption as a whole is in diffusion.py when present)."""

from __future__ import annotations

import torch
from timing import Case

import idip.ops
from idip.ops import reference as ref


def cases(device: str) -> list[Case]:
    out = []
    for B, N in [(16, 300)]:

        def setup(B=B, N=N):
            g = torch.Generator().manual_seed(0)
            x = torch.rand(B, N, 4, generator=g) * 2 - 1
            noise = torch.randn(B, N, 4, generator=g)
            t = torch.randint(0, 1000, (B,), generator=g)
            ac = torch.linspace(0.9999, 1e-4, 1000, dtype=torch.float64)
            size = torch.tensor([[1216.0, 800.0, 1216.0, 800.0]]).repeat(B, 1)
            return [v.to(device) for v in (x, noise, t, ac, size)]

        out.append(
            Case(
                name=f"box_q_sample fwd (B={B}, N={N})",
                group="diffusion",
                pass_kind="fwd",
                setup=setup,
                impls={
                    "reference": lambda a: ref.box_q_sample(*a),
                    "ours": lambda a: idip.ops.box_q_sample(*a),
                },
                bytes=B * N * 4 * 4 * 4,  # read x_start, noise; write x_t, boxes (float32)
            )
        )
    return out
