"""Shapes and behaviour of IDIP's head modules."""

from __future__ import annotations

import math

import torch

from idip.modeling.idip.head import (
    BoxHead,
    DynamicConv,
    IDIPHead,
    SinusoidalTimeEmbedding,
    TimeEncoder,
)
from idip.modeling.idip.mask_head import MaskHead


def _features(b=2, c=32, size=64):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(b, c, size // s, size // s, generator=g) for s in (8, 16, 32)]


def test_sinusoidal_embedding_values():
    emb = SinusoidalTimeEmbedding(4)(torch.tensor([0.0, 2.0]))
    # half = 2: frequencies 1 and 10000^-1/2 = 0.01
    expected = torch.tensor(
        [[0, 0, 1, 1], [math.sin(2), math.sin(0.02), math.cos(2), math.cos(0.02)]]
    )
    torch.testing.assert_close(emb, expected.float())


def test_time_encoder_shape():
    assert TimeEncoder(16)(torch.tensor([3, 999])).shape == (2, 64)


def test_dynamic_conv_shapes():
    dc = DynamicConv(16, 4, 7, with_proj=True)
    assert dc(torch.randn(5, 16), torch.randn(5, 16, 7, 7)).shape == (5, 16)
    dc = DynamicConv(16, 4, 14, with_proj=False)
    assert dc(torch.randn(5, 16), torch.randn(5, 16, 14, 14)).shape == (5, 196, 16)


def test_box_head_modulation_and_shapes():
    head = BoxHead(16, 3)
    logits, deltas = head(torch.randn(2, 5, 16), torch.randn(2, 64))
    assert logits.shape == (2, 5, 3) and deltas.shape == (2, 5, 4)


def test_idip_head_outputs_per_stage():
    head = IDIPHead(
        3, [8, 16, 32], dim=32, num_stages=2, num_attn_heads=4, dim_feedforward=64, dim_dynamic=8
    )
    boxes = torch.tensor(
        [[[0.0, 0.0, 20.0, 20.0], [10.0, 5.0, 60.0, 40.0], [1.0, 1.0, 2.0, 2.0]]]
    ).repeat(2, 1, 1)
    outs = head(_features(), boxes, torch.tensor([0, 500]))
    assert len(outs) == 2
    for out in outs:
        assert out["logits"].shape == (2, 3, 3)
        assert out["boxes"].shape == (2, 3, 4)
        assert out["proposal_feat"].shape == (2, 3, 32)
    # Focal prior: the initial foreground probability is about 0.01 for the bias alone.
    assert torch.sigmoid(head.box_head.class_logits.bias).allclose(torch.full((3,), 0.01))
    # Stage 2 starts from the detached stage-1 boxes: its boxes do not depend on stage 1 boxes' graph.
    outs[-1]["boxes"].sum().backward()
    assert head.stages[0].ffn[0].weight.grad is not None  # through the proposal features


def test_mask_head_shapes_and_empty():
    mh = MaskHead(3, [8, 16, 32], dim=32, dim_dynamic=8, pooler_resolution=14)
    rois = torch.tensor([[0, 0.0, 0.0, 30.0, 30.0], [1, 5.0, 5.0, 50.0, 60.0]])
    assert mh(_features(), rois, torch.randn(2, 32)).shape == (2, 3, 28, 28)
    empty = mh(_features(), rois[:0], torch.randn(0, 32))
    assert empty.shape == (0, 3, 28, 28)
