"""Export wrappers of CondInst and IDIP inference: tensors in, fixed-shape tensors out.

``export_wrapper(model)`` returns an ``nn.Module`` whose forward takes one image (and, for
IDIP, a seed tensor) and returns D detections, D fixed at construction:

    boxes [D, 4] float32 xyxy, scores [D] float32, labels [D] int64,
    masks [D, H, W] bool, valid [D] bool

in the input image's coordinates. The valid rows come first and are the detections the eager
model gives for the same image (same order); the other rows are padding (zeros, ``valid``
False). What differs from eager, and why:

- candidates: a top-k over every (location, class) or (proposal, class) pair, the ones at or
  below the score threshold marked invalid, instead of thresholding first (a data-dependent
  count);
- NMS: ``idip.ops.batched_nms`` over those candidates with the invalid ones scored -1 (after
  every valid one, so they never suppress a valid box), its result cut or padded to D;
- IDIP's random initial boxes: drawn from a seed tensor by a counter-based generator
  (:func:`idip.modeling.fixed_shape.counter_normal`), not from a ``torch.Generator``.

:func:`export_program` runs ``torch.export.export`` on a wrapper; :func:`export_onnx` converts
the result to ONNX (the ``idip`` ops replaced by standard ONNX operators,
:mod:`idip.ops.export`).
"""

from __future__ import annotations

import contextlib
import copy
import io

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..ops import batched_nms
from .box_ops import clip_boxes
from .condinst import CondInst
from .fixed_shape import counter_normal, pad_indices, valid_first
from .idip.detector import IDIP
from .mask_paste import paste_masks_in_image
from .op_library import op_library
from .poolers import box_lists_to_rois

# Score given to the candidates below the threshold before NMS: below every sigmoid score, so
# the greedy scan reaches them after all valid candidates and they cannot suppress one.
_INVALID_SCORE = -1.0
# Detections whose full-resolution masks are computed at once (as eager CondInst).
_MASK_CHUNK = 32


def _with_kernels(model: nn.Module) -> nn.Module:
    """A copy of ``model`` that calls the compiled ops: their fake kernels are what the exporter
    traces (the plain-PyTorch references of some ops have data-dependent shapes)."""
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if hasattr(module, "use_reference_ops"):
            module.use_reference_ops = False
    sampler = getattr(model, "sampler", None)
    if sampler is not None:
        sampler.use_reference_ops = False
    return model


def _pad_image(image: Tensor, mean: Tensor, std: Tensor, divisibility: int) -> Tensor:
    """[1, 3, H, W] 0-255 RGB -> normalised [1, 3, Hp, Wp], zero-padded bottom/right to a
    multiple of ``divisibility`` (``batch_images`` after normalisation, as the models do)."""
    if image.dim() != 4 or image.shape[0] != 1 or image.shape[1] != 3:
        raise ValueError(f"image must be [1, 3, H, W], got {list(image.shape)}")
    x = (image.float() - mean) / std
    h, w = image.shape[-2:]
    d = max(int(divisibility), 1)
    return F.pad(x, (0, (-w) % d, 0, (-h) % d))


def _finish(
    boxes: Tensor, scores: Tensor, labels: Tensor, masks: Tensor, valid: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Valid rows first, padding rows zeroed (boxes [D, 4], scores [D], labels [D], masks
    [D, H, W], valid [D])."""
    order = valid_first(valid)
    boxes, scores, labels, masks, valid = (
        boxes[order],
        scores[order],
        labels[order],
        masks[order],
        valid[order],
    )
    return (
        torch.where(valid[:, None], boxes, torch.zeros_like(boxes)),
        torch.where(valid, scores, torch.zeros_like(scores)),
        torch.where(valid, labels, torch.zeros_like(labels)),
        masks & valid[:, None, None],
        valid,
    )


class CondInstExport(nn.Module):
    """CondInst inference on one image at a fixed number of detections.

    Args:
        model: a built :class:`~idip.modeling.condinst.CondInst` (copied, in eval mode).
        num_detections: D; default ``MODEL.FCOS.POST_NMS_TOPK_TEST`` (the eager maximum).
    """

    def __init__(self, model: CondInst, num_detections: int | None = None):
        super().__init__()
        self.model = _with_kernels(model)
        fcos = self.model.fcos
        self.num_detections = int(num_detections or fcos.post_nms_topk)
        if self.num_detections < 1:
            raise ValueError(
                "CondInst export needs a number of detections >= 1 (MODEL.FCOS.POST_NMS_TOPK_TEST "
                f"is {fcos.post_nms_topk}; give num_detections)"
            )

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Detections of one image.

        Args:
            image: [1, 3, H, W] float32, RGB in 0..255 (the eager ``sample["image"]`` with a
                batch dimension).

        Returns:
            boxes [D, 4] xyxy in the image, scores [D], labels [D] int64, masks [D, H, W] bool,
            valid [D] bool; valid rows first, in the eager order.
        """
        m = self.model
        fcos = m.fcos
        h, w = image.shape[-2:]
        padded = _pad_image(image, m.pixel_mean, m.pixel_std, m.size_divisibility)
        features = m.backbone(padded)
        mask_feats = m.mask_branch(features)
        out = fcos(features, m.controller)

        # FCOS.predict for one image, with a top-k per level instead of a threshold.
        probs = out.logits[0].float().sigmoid()  # [M, K]
        ctr = out.ctrness[0].float().sigmoid()  # [M]
        box_reg = out.box_reg[0].float()
        if fcos.norm_reg_targets:
            box_reg = box_reg * out.strides[:, None]
        num_classes = probs.shape[1]
        cand_scores, cand_valid, cand_locs = [], [], []
        start = 0
        for size in out.level_sizes:
            level_probs = probs[start : start + size]
            level_ctr = ctr[start : start + size, None]
            scored = level_probs * level_ctr
            passed = (scored if fcos.thresh_with_ctr else level_probs) > fcos.score_thresh
            k = min(fcos.pre_nms_topk, size * num_classes)
            top, idx = torch.where(passed, scored, _INVALID_SCORE).flatten().topk(k)
            cand_scores.append(top)
            cand_valid.append(passed.flatten()[idx])
            cand_locs.append(idx + start * num_classes)  # flat (location, class) index
            start += size
        flat = torch.cat(cand_locs)
        valid = torch.cat(cand_valid)
        scores = torch.where(valid, torch.cat(cand_scores).clamp(min=0).sqrt(), _INVALID_SCORE)
        loc = flat // num_classes
        labels = flat % num_classes
        locations = out.locations[loc]
        reg = box_reg[loc]
        boxes = torch.cat([locations - reg[:, :2], locations + reg[:, 2:]], dim=1)

        keep, present = pad_indices(
            batched_nms(boxes, scores, labels, fcos.nms_thresh), self.num_detections
        )
        valid = present & valid[keep]
        if fcos.post_nms_topk > 0:
            valid = valid & (
                torch.arange(self.num_detections, device=image.device) < fcos.post_nms_topk
            )
        boxes = clip_boxes(boxes[keep], h, w)
        valid = valid & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        masks = self._masks(
            mask_feats, out.top_feats[0][loc[keep]], locations[keep], out.levels[loc[keep]], h, w
        )
        return _finish(boxes, scores[keep], labels[keep], masks, valid)

    def _masks(
        self, mask_feats: Tensor, params: Tensor, locations: Tensor, levels: Tensor, h: int, w: int
    ) -> Tensor:
        """[D, h, w] bool masks, as eager ``CondInst._paste_masks``: stride-4 probabilities,
        aligned upsample to the padded input, crop to the image, threshold. (Eager then resizes
        to the original size: here the input size itself, for which the resize is the identity.)

        Args:
            mask_feats: [1, C, Hp / s, Wp / s] mask-branch output (stride s).
            params: [D, P] controller outputs of the detections.
            locations: [D, 2] their locations; levels: [D] int64 their FPN levels.
            h, w: the input image size.
        """
        m = self.model
        stride = m.mask_branch.out_stride
        im_inds = torch.zeros(params.shape[0], dtype=torch.int64, device=params.device)
        probs = m.mask_head(mask_feats, stride, params, im_inds, locations, levels).sigmoid()
        factor = mask_feats.shape[-2] * stride // probs.shape[-2]
        chunks = []
        # Full-resolution float masks are large: upsampled and thresholded a few at a time.
        for start in range(0, probs.shape[0], _MASK_CHUNK):
            p = probs[start : start + _MASK_CHUNK]
            if factor > 1:
                p = op_library(m.use_reference_ops).aligned_upsample(p, factor)
            chunks.append(p[:, 0, :h, :w] > m.mask_threshold)
        return torch.cat(chunks)


class IDIPExport(nn.Module):
    """IDIP inference on one image at a fixed number of detections, its random initial boxes
    computed from a seed tensor.

    The sampler consumes (x_T [1, N, 4], S x 2 x [1, N, 4]) standard normal numbers (see
    ``DDIMSampler.draw_noise``), N = ``NUM_PROPOSALS_TEST``, S = ``SAMPLE_STEP - 1``; here they
    are :func:`counter_normal` of the seed, in that order. Eager IDIP draws the same amounts
    from a ``torch.Generator``, so its detections equal this wrapper's when it is given the
    wrapper's :meth:`noise` (``DDIMSampler.sample(noise=...)``), not for the same seed number.

    Args:
        model: a built :class:`~idip.modeling.idip.detector.IDIP` (copied, in eval mode).
        num_detections: D; default ``TEST.DETECTIONS_PER_IMAGE``.
    """

    def __init__(self, model: IDIP, num_detections: int | None = None):
        super().__init__()
        self.model = _with_kernels(model)
        self.num_detections = int(num_detections or self.model.detections_per_image)
        if self.num_detections < 1:
            raise ValueError(
                f"IDIP export needs a number of detections >= 1, got {self.num_detections}"
            )

    def noise(self, seed: Tensor) -> tuple[Tensor, Tensor]:
        """The sampler's random numbers for ``seed`` (int64 [1]): (x_T [1, N, 4], [S, 2, 1, N,
        4]), float32."""
        n = self.model.num_proposals_test
        steps = len(self.model.sampler.time_pairs) - 1
        z = counter_normal(seed, n * 4 * (1 + 2 * steps))
        return z[: n * 4].reshape(1, n, 4), z[n * 4 :].reshape(steps, 2, 1, n, 4)

    def forward(self, image: Tensor, seed: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Detections of one image.

        Args:
            image: [1, 3, H, W] float32, RGB in 0..255.
            seed: int64 [1], the seed of the initial boxes (taken modulo 2**31 - 1).

        Returns:
            boxes [D, 4] xyxy in the image, scores [D], labels [D] int64, masks [D, H, W] bool,
            valid [D] bool; valid rows first, in the eager order.
        """
        m = self.model
        h, w = image.shape[-2:]
        padded = _pad_image(image, m.pixel_mean, m.pixel_std, m.size_divisibility)
        image_size = torch.tensor([[w, h, w, h]], dtype=torch.float32, device=image.device)
        features = m._features(padded)

        def denoise(boxes: Tensor, t: Tensor):
            last = m.head(features, boxes, t)[-1]
            return last["logits"], last["boxes"], last["proposal_feat"]

        noise = tuple(x.to(image.device) for x in self.noise(seed))
        logits, boxes, feats = m.sampler.sample(
            denoise, image_size, m.num_proposals_test, noise=noise
        )
        return self._postprocess(features, logits[0], boxes[0], feats[0], h, w)

    def _postprocess(
        self, features: list[Tensor], logits: Tensor, boxes: Tensor, feats: Tensor, h: int, w: int
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``IDIP.postprocess`` for one image at D rows.

        Args:
            features: FPN maps [1, C, H_l, W_l]; logits: [N, K]; boxes: [N, 4] absolute xyxy;
            feats: [N, dim] proposal features; h, w: the input image size.
        """
        m = self.model
        d = self.num_detections
        n, c = logits.shape
        scores, idx = logits.float().sigmoid().flatten().topk(min(m.num_proposals_test, n * c))
        above = scores > m.score_thresh
        prop = idx // c
        labels = idx % c
        nms_scores = torch.where(above, scores, _INVALID_SCORE)
        keep, present = pad_indices(
            batched_nms(boxes[prop].float(), nms_scores, labels, m.nms_thresh), d
        )
        rank = torch.arange(d, device=logits.device)
        valid = present & above[keep] & (rank < m.detections_per_image)
        raw = boxes[prop[keep]]
        clipped = clip_boxes(raw, h, w)
        valid = valid & (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
        mask_boxes = raw if m.mask_from_unclipped_boxes else clipped
        rois = box_lists_to_rois([mask_boxes])
        probs = m.mask_head(features, rois, feats[prop[keep]]).sigmoid()  # [D, K, S, S]
        probs = probs[rank, labels[keep]]
        masks = paste_masks_in_image(probs, clipped, h, w, m.mask_threshold)
        return _finish(clipped, scores[keep], labels[keep], masks, valid)


def export_wrapper(model: nn.Module, num_detections: int | None = None) -> nn.Module:
    """The export wrapper of a built CondInst or IDIP (see :class:`CondInstExport`,
    :class:`IDIPExport`)."""
    if isinstance(model, CondInst):
        return CondInstExport(model, num_detections)
    if isinstance(model, IDIP):
        return IDIPExport(model, num_detections)
    raise ValueError(f"no export wrapper for {type(model).__name__} (CondInst and IDIP have one)")


def input_names(wrapper: nn.Module) -> list[str]:
    """Names of the wrapper's inputs (the ONNX graph's): ``image`` (and ``seed`` for IDIP)."""
    return ["image", "seed"] if isinstance(wrapper, IDIPExport) else ["image"]


OUTPUT_NAMES = ["boxes", "scores", "labels", "masks", "valid"]


def example_inputs(
    wrapper: nn.Module, height: int, width: int, seed: int = 0
) -> tuple[Tensor, ...]:
    """Inputs of the traced size: a [1, 3, height, width] image of uniform noise in 0..255
    (from a fixed generator) and, for IDIP, ``seed`` as an int64 [1] tensor."""
    if height < 1 or width < 1:
        raise ValueError(f"the export image size must be positive, got {height}x{width}")
    device = next(wrapper.parameters()).device
    g = torch.Generator().manual_seed(0)
    image = (torch.rand(1, 3, height, width, generator=g) * 255).to(device)
    if isinstance(wrapper, IDIPExport):
        return image, torch.tensor([seed], dtype=torch.int64, device=device)
    return (image,)


def export_program(
    wrapper: nn.Module, inputs: tuple[Tensor, ...], strict: bool = False
) -> torch.export.ExportedProgram:
    """``torch.export.export`` of a wrapper at the shapes of ``inputs`` (its example inputs).

    Traced without autograd, so the program holds no grad-mode regions. The ``idip`` ops stay
    single nodes; running the program (``.module()``) needs ``idip.ops`` imported.
    """
    with torch.no_grad():
        return torch.export.export(wrapper, tuple(inputs), strict=strict)


def export_onnx(program: torch.export.ExportedProgram, path: str, names: list[str]) -> None:
    """Writes ``program`` as one ONNX file (opset 18, weights inside) to ``path``.

    The ``idip`` ops are decomposed or translated into standard ONNX operators first
    (:mod:`idip.ops.export`), so any ONNX runtime with RoiAlign and NonMaxSuppression runs it
    (onnxruntime does). Needs the packages onnx and onnxscript.

    Args:
        program: from :func:`export_program`.
        path: the .onnx file.
        names: input names (:func:`input_names`).
    """
    from ..ops.export import ONNX_OPSET, onnx_decompositions, onnx_translations

    decomposed = program.run_decompositions(onnx_decompositions())
    args = program.example_inputs[0]
    # The converter reports each of its steps on stdout; a tool's output should stay its own.
    with contextlib.redirect_stdout(io.StringIO()):
        onnx_program = torch.onnx.export(
            decomposed,
            args,
            dynamo=True,
            input_names=names,
            output_names=OUTPUT_NAMES,
            custom_translation_table=onnx_translations(),
            opset_version=ONNX_OPSET,
            external_data=False,
        )
    onnx_program.save(path, external_data=False)
