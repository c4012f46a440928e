"""Export (idip.modeling.export): the fixed-shape wrappers give eager's detections, and so do
the torch.export program (saved, loaded, run with .module()) and the ONNX file (onnxruntime).

Tiny models (ResNet-18, FPN 32 channels, small images) whose heads are perturbed so that there
are detections, masks and, for IDIP, box renewal to compare.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from idip.config import get_cfg
from idip.modeling import build_model
from idip.modeling.export import (
    CondInstExport,
    IDIPExport,
    example_inputs,
    export_onnx,
    export_program,
    export_wrapper,
    input_names,
)
from idip.modeling.fixed_shape import counter_normal, counter_uniform, pad_indices, valid_first

HAS_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="onnx, onnxscript or onnxruntime missing")

_COMMON = [
    "MODEL.DEVICE",
    "cpu",
    "MODEL.WEIGHTS",
    "",
    "MODEL.BACKBONE.FREEZE_AT",
    0,
    "MODEL.RESNETS.DEPTH",
    18,
    "MODEL.RESNETS.NORM",
    "BN",
    "MODEL.FPN.OUT_CHANNELS",
    32,
]
TINY = {
    "CondInst": _COMMON + [
        "MODEL.META_ARCHITECTURE", "CondInst", "MODEL.FCOS.NUM_CLASSES", 3,
        "MODEL.RESNETS.OUT_FEATURES", ["res3", "res4", "res5"], "MODEL.FPN.TOP_BLOCK", "P6P7",
        "MODEL.FCOS.NUM_CLS_CONVS", 1, "MODEL.FCOS.NUM_BOX_CONVS", 1,
        "MODEL.FCOS.PRE_NMS_TOPK_TEST", 50, "MODEL.FCOS.POST_NMS_TOPK_TEST", 40,
        "MODEL.CONDINST.MASK_BRANCH.CHANNELS", 32, "MODEL.CONDINST.MASK_BRANCH.NUM_CONVS", 1,
    ],
    "IDIP": _COMMON + [
        "MODEL.META_ARCHITECTURE", "IDIP", "MODEL.IDIP.NUM_CLASSES", 3, "MODEL.IDIP.HIDDEN_DIM", 32,
        "MODEL.IDIP.NUM_PROPOSALS", 30, "MODEL.IDIP.NUM_HEADS", 2, "MODEL.IDIP.DIM_DYNAMIC", 8,
        "MODEL.IDIP.DIM_FEEDFORWARD", 64, "MODEL.IDIP.NHEADS", 4, "MODEL.IDIP.MASK_NUM_CONVS", 1,
        "MODEL.IDIP.SAMPLE_STEP", 3, "MODEL.IDIP.SCORE_THRESH_TEST", 0.3,
        "TEST.DETECTIONS_PER_IMAGE", 12,
    ],
}  # fmt: skip
# CondInst's GroupNorm needs two values per group on P7 (stride 128): images of 129+ rows.
IMAGE_SIZE = {"CondInst": (136, 160), "IDIP": (64, 96)}


def tiny_model(arch: str) -> torch.nn.Module:
    """A tiny ``arch`` whose class (and mask) outputs are spread out: the default priors would
    score every candidate about equally low and give near-0.5 mask probabilities."""
    cfg = get_cfg()
    cfg.merge_from_list(TINY[arch])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        if arch == "CondInst":
            head = model.fcos.head
            head.cls_logits.weight.normal_(0, 0.3)
            head.cls_logits.bias.fill_(-2.5)
            head.bbox_pred.weight.normal_(0, 0.3)
            model.controller.weight.normal_(0, 0.3)
        else:
            box_head = model.head.box_head
            box_head.class_logits.weight.normal_(0, 0.3)
            # About a third of the boxes are renewed at each step.
            box_head.class_logits.bias.fill_(-1.5)
            model.mask_head.predictor.weight.normal_(0, 0.3)
            model.mask_head.predictor.bias.fill_(0.0)
    return model


def _batch(image: torch.Tensor) -> list[dict]:
    return [{"image": image[0], "height": image.shape[2], "width": image.shape[3], "image_id": 0}]


def idip_eager(model, image: torch.Tensor, noise) -> dict:
    """Eager IDIP inference (``IDIP.inference``) with the sampler given ``noise``."""
    batch = _batch(image)
    with torch.no_grad():
        images, image_size, sizes = model._images(batch)
        features = model._features(images)

        def denoise(boxes, t):
            last = model.head(features, boxes, t)[-1]
            return last["logits"], last["boxes"], last["proposal_feat"]

        out = model.sampler.sample(denoise, image_size, model.num_proposals_test, noise=noise)
        return model.postprocess(features, *out, batch, sizes)[0]


class Case:
    """One model: its wrapper, example inputs, eager result and exported program (lazily)."""

    def __init__(self, arch: str):
        self.arch = arch
        self.model = tiny_model(arch)
        self.wrapper = export_wrapper(self.model)
        self.inputs = example_inputs(self.wrapper, *IMAGE_SIZE[arch], seed=7)
        if arch == "IDIP":
            self.eager = idip_eager(self.model, self.inputs[0], self.wrapper.noise(self.inputs[1]))
        else:
            with torch.no_grad():
                self.eager = self.model(_batch(self.inputs[0]))[0]
        with torch.no_grad():
            self.outputs = self.wrapper(*self.inputs)
        self._program = None

    @property
    def program(self):
        if self._program is None:
            self._program = export_program(self.wrapper, self.inputs)
        return self._program


@pytest.fixture(scope="module", params=["CondInst", "IDIP"])
def case(request) -> Case:
    return Case(request.param)


def assert_matches_eager(outputs, eager: dict, box_atol: float, mask_iou: float = 1.0) -> None:
    """Fixed-shape outputs against an eager result: the valid rows are eager's detections in
    eager's order, the padding rows are zeros."""
    boxes, scores, labels, masks, valid = (torch.as_tensor(x) for x in outputs)
    d = boxes.shape[0]
    assert boxes.shape == (d, 4) and scores.shape == (d,) and labels.shape == (d,)
    assert masks.shape[0] == d and valid.shape == (d,)
    assert labels.dtype == torch.int64 and masks.dtype == torch.bool and valid.dtype == torch.bool
    n = int(valid.sum())
    assert n == eager["scores"].numel() > 0
    assert valid[:n].all() and not valid[n:].any()
    torch.testing.assert_close(boxes[:n], eager["boxes"], atol=box_atol, rtol=0)
    torch.testing.assert_close(scores[:n], eager["scores"], atol=1e-5, rtol=0)
    assert torch.equal(labels[:n], eager["labels"])
    inter = (masks[:n] & eager["masks"]).flatten(1).sum(1).float()
    union = (masks[:n] | eager["masks"]).flatten(1).sum(1).float()
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
    assert iou.min() >= mask_iou, iou.min()
    assert not boxes[n:].any() and not scores[n:].any() and not labels[n:].any()
    assert not masks[n:].any()


# ---------------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------------
def test_counter_normal_is_standard_normal_and_a_function_of_the_seed():
    z = counter_normal(torch.tensor([0]), 200_000)
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    assert abs((z.abs() > 2).float().mean() - 0.0455) < 0.003  # the normal's two-sided tail
    u = counter_uniform(torch.tensor([0]), 200_000)
    assert 0 < u.min() and u.max() < 1
    counts = torch.histc(u, 20, 0, 1)
    assert ((counts - 10_000) ** 2 / 10_000).sum() < 50  # chi-square, 19 dof: p ~ 1e-4
    assert torch.equal(counter_normal(torch.tensor([0]), 10), z[:10])  # a prefix of the stream
    other = counter_normal(torch.tensor([1]), 200_000)
    assert abs(torch.corrcoef(torch.stack([z, other]))[0, 1]) < 0.01
    # Seeds count modulo 2**31 - 1 (documented); large and negative ones are fine.
    assert torch.equal(
        counter_normal(torch.tensor([2**31]), 5), counter_normal(torch.tensor([1]), 5)
    )
    assert torch.isfinite(counter_normal(torch.tensor([-(2**62)]), 1000)).all()


def test_pad_indices_and_valid_first():
    idx, present = pad_indices(torch.tensor([5, 2, 7]), 5)
    assert idx.tolist() == [5, 2, 7, 0, 0] and present.tolist() == [True] * 3 + [False] * 2
    idx, present = pad_indices(torch.tensor([5, 2, 7]), 2)
    assert idx.tolist() == [5, 2] and present.all()
    order = valid_first(torch.tensor([False, True, False, True, True]))
    assert order.tolist() == [1, 3, 4, 0, 2]


def test_export_wrapper_rejects_other_models():
    with pytest.raises(ValueError, match="no export wrapper"):
        export_wrapper(torch.nn.Linear(2, 2))


# ---------------------------------------------------------------------------------------------
# the wrappers, eager
# ---------------------------------------------------------------------------------------------
def test_wrapper_gives_the_eager_detections(case):
    """Same detections, bit for bit up to box arithmetic, as the model's own inference."""
    assert_matches_eager(case.outputs, case.eager, box_atol=1e-4)
    expected = {"CondInst": 40, "IDIP": 12}[case.arch]  # POST_NMS_TOPK / DETECTIONS_PER_IMAGE
    assert case.outputs[0].shape[0] == expected


def test_fewer_detections_are_the_first_eager_ones():
    model = tiny_model("CondInst")
    wrapper = CondInstExport(model, num_detections=5)
    inputs = example_inputs(wrapper, *IMAGE_SIZE["CondInst"])
    with torch.no_grad():
        boxes, scores, _, _, valid = wrapper(*inputs)
        eager = model(_batch(inputs[0]))[0]
    assert valid.all() and torch.equal(scores, eager["scores"][:5])
    torch.testing.assert_close(boxes, eager["boxes"][:5], atol=1e-4, rtol=0)


def test_idip_seed_changes_the_initial_boxes():
    wrapper = IDIPExport(tiny_model("IDIP"))
    a, b = wrapper.noise(torch.tensor([1])), wrapper.noise(torch.tensor([2]))
    n, steps = 30, 2
    assert a[0].shape == (1, n, 4) and a[1].shape == (steps, 2, 1, n, 4)
    assert not torch.equal(a[0], b[0])
    assert torch.equal(a[0], wrapper.noise(torch.tensor([1]))[0])


# ---------------------------------------------------------------------------------------------
# torch.export
# ---------------------------------------------------------------------------------------------
def test_torch_export_program_runs_and_matches(case, tmp_path):
    """Saved with torch.export.save, loaded, run on its own example inputs: the wrapper's
    numbers, and eager's detections."""
    path = tmp_path / f"{case.arch}.pt2"
    torch.export.save(case.program, str(path))
    loaded = torch.export.load(str(path))
    stored = loaded.example_inputs[0]
    assert all(torch.equal(a, b) for a, b in zip(stored, case.inputs))
    out = loaded.module()(*stored)
    for got, want in zip(out, case.outputs):
        # The eager wrapper runs nn.MultiheadAttention's fused inference path; the program
        # its decomposition.
        torch.testing.assert_close(got, want, atol=1e-3, rtol=0)
    assert_matches_eager(out, case.eager, box_atol=1e-3)
    targets = {str(n.target) for n in case.program.graph.nodes if n.op == "call_function"}
    assert "idip.batched_nms.default" in targets  # the op itself, traced by its fake kernel


def test_torch_export_program_takes_another_image_and_seed(case):
    image = torch.rand_like(case.inputs[0]) * 255
    inputs = (image,) + tuple(x + 1 for x in case.inputs[1:])  # the next seed for IDIP
    with torch.no_grad():
        want = case.wrapper(*inputs)
    got = case.program.module()(*inputs)
    assert torch.equal(got[4], want[4])
    torch.testing.assert_close(got[0], want[0], atol=1e-3, rtol=0)


# ---------------------------------------------------------------------------------------------
# ONNX
# ---------------------------------------------------------------------------------------------
@needs_onnx
def test_onnx_file_runs_in_onnxruntime_and_matches(case, tmp_path):
    import onnx
    import onnxruntime

    path = tmp_path / f"{case.arch}.onnx"
    export_onnx(case.program, str(path), input_names(case.wrapper))
    model = onnx.load(str(path))
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}  # standard operators only
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert names == input_names(case.wrapper)
    out = session.run(None, {k: v.numpy() for k, v in zip(names, case.inputs)})
    assert [o.name for o in session.get_outputs()] == [
        "boxes",
        "scores",
        "labels",
        "masks",
        "valid",
    ]
    # Float convolutions in another library: boxes agree to ~1e-5 relative, masks to a few
    # pixels at the 0.5 boundary.
    assert_matches_eager([torch.from_numpy(o) for o in out], case.eager, 1e-2, mask_iou=0.98)
