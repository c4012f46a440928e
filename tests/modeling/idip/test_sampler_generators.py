"""DDIMSampler with one generator per image: an image's result does not depend on its batch."""

from __future__ import annotations

import pytest
import torch

from idip.modeling.idip.diffusion import DDIMSampler, DiffusionSchedule


def _head(boxes, t):
    # A deterministic stand-in head: scores depend on the box, prediction = slightly shrunk box.
    logits = (boxes[..., :1] - boxes[..., 2:3]) / 50.0
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    half = (boxes[..., 2:] - boxes[..., :2]) / 2 * 0.9
    return logits, torch.cat([centre - half, centre + half], dim=-1), None


def test_per_image_generators_make_batching_irrelevant():
    sampler = DDIMSampler(DiffusionSchedule(1000), num_steps=3, eta=1.0, renewal_threshold=0.5)
    size = torch.tensor([[64.0, 48.0, 64.0, 48.0], [80.0, 80.0, 80.0, 80.0]])
    gens = [torch.Generator().manual_seed(s) for s in (5, 6)]
    logits, boxes, _ = sampler.sample(_head, size, 7, gens)
    for b, seed in enumerate((5, 6)):
        single_logits, single_boxes, _ = sampler.sample(
            _head, size[b : b + 1], 7, [torch.Generator().manual_seed(seed)]
        )
        torch.testing.assert_close(single_boxes[0], boxes[b])
        torch.testing.assert_close(single_logits[0], logits[b])


def test_generator_count_must_match_batch():
    sampler = DDIMSampler(DiffusionSchedule(1000), num_steps=1)
    with pytest.raises(ValueError, match="generators"):
        sampler.sample(_head, torch.ones(2, 4) * 10, 3, [torch.Generator()])
