"""The authors' released checkpoints, converted to this repository's models.

Two formats, recognised by their keys:

- **AdelaiDet CondInst** (aim-uofa/AdelaiDet model zoo, ``{"model": state_dict}`` with
  detectron2 names): ``backbone.bottom_up.*`` (detectron2 ResNet), FPN, ``proposal_generator.
  fcos_head.*``, ``mask_branch.*``, ``controller.*``. Trained on BGR input with MSRA R-50/101
  statistics and the stride in the 1x1 convolutions: the converter flips the first
  convolution's input channels (so the model takes RGB images, as every model here does) and
  the weights then need ``MODEL.PIXEL_MEAN [123.675, 116.28, 103.53]`` (their BGR mean, in RGB
  order), ``MODEL.PIXEL_STD [1, 1, 1]`` and ``MODEL.RESNETS.STRIDE_IN_1X1 True``.
- **IDIP authors** (leftthomas/IDIP ``model.pth``, a detectron2 checkpointer file): detectron2
  ResNet-FPN, ``roi_head.dynamic_heads.*``, ``roi_head.time_heads.*``, ``roi_head.box_head.*``,
  ``roi_head.mask_head.*``. RGB input with torchvision statistics (their saved ``pixel_mean`` /
  ``pixel_std`` buffers are compared with the config), stride in the 3x3 convolutions. Their
  mask-head convolutions have biases in front of BatchNorm: a bias b before a BN is the BN with
  its running mean lowered by b (exact in eval; in training the batch mean absorbs it), so it is
  folded there.

Differences that need no conversion: the authors' attention returns its weights
(``need_weights=True``) and their FrozenBN computes with ``F.batch_norm`` (rounding only); the
IDIP authors' FPN also makes a p6 that nothing reads (it has no parameters).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import ConfigError
from .backbone.weights import detectron2_to_torchvision_name

ADELAIDET_CONDINST = "AdelaiDet CondInst"
IDIP_AUTHORS = "IDIP authors"

# Config values each format's weights need (key -> value), besides those a model's shapes imply.
REQUIRED_SETTINGS = {
    ADELAIDET_CONDINST: {
        "MODEL.PIXEL_MEAN": [123.675, 116.28, 103.53],
        "MODEL.PIXEL_STD": [1.0, 1.0, 1.0],
        "MODEL.RESNETS.STRIDE_IN_1X1": True,
    },
    IDIP_AUTHORS: {"MODEL.RESNETS.STRIDE_IN_1X1": False},
}
META_ARCHITECTURE = {ADELAIDET_CONDINST: "CondInst", IDIP_AUTHORS: "IDIP"}


@dataclass
class Conversion:
    """The result of :func:`convert_authors_checkpoint`.

    Attributes:
        format: ``ADELAIDET_CONDINST`` or ``IDIP_AUTHORS``.
        meta_architecture: the model the weights are for ("CondInst" or "IDIP").
        state: the converted state dict, in our key names.
        mapped: number of tensors renamed (and, where said in ``notes``, transformed).
        folded: source keys folded into another tensor (conv biases into BN running means).
        ignored: source keys deliberately dropped (buffers our models recompute).
        unmapped: source keys no rule knows (the file is not what its keys suggested).
        notes: the transformations applied.
        settings: config values the weights need (see :func:`check_settings`).
    """

    format: str
    meta_architecture: str
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    mapped: int = 0
    folded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        parts = [f"{self.format} checkpoint: {self.mapped} tensors mapped"]
        if self.folded:
            parts.append(f"{len(self.folded)} folded ({_abbreviate(self.folded)})")
        if self.ignored:
            parts.append(f"{len(self.ignored)} ignored ({_abbreviate(self.ignored)})")
        return ", ".join(parts) + ("; " + "; ".join(self.notes) if self.notes else "")


def _abbreviate(names: list[str], limit: int = 3) -> str:
    return ", ".join(names[:limit]) + (
        f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    )


def detect_format(keys) -> str | None:
    """``ADELAIDET_CONDINST``, ``IDIP_AUTHORS`` or None, from a state dict's keys."""
    keys = list(keys)
    if (
        any(k.startswith("proposal_generator.fcos_head.") for k in keys)
        and "controller.weight" in keys
    ):
        return ADELAIDET_CONDINST
    if any(k.startswith("roi_head.dynamic_heads.") for k in keys):
        return IDIP_AUTHORS
    return None


def unwrap_state_dict(data: Any) -> dict[str, Any] | None:
    """The state dict inside a checkpoint: ``data["model"]`` (detectron2 checkpointer, AdelaiDet
    model zoo) or ``data`` itself; None when it holds no authors' format."""
    if not isinstance(data, Mapping):
        return None
    for candidate in (data.get("model"), data):
        if isinstance(candidate, Mapping) and detect_format(candidate.keys()):
            return {str(k): v for k, v in candidate.items()}
    return None


# ---- renaming rules: (pattern, replacement) on the key after its prefix -----------------------
_STAGE_RULES = [
    (r"attention\.(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)", r"self_attn.\1"),
    (r"attention_norm\.(weight|bias)", r"norm1.\1"),
    (r"instance_conv\.dynamic_layer\.(weight|bias)", r"inst_interact.dynamic_layer.\1"),
    (r"instance_conv\.norm_in\.(weight|bias)", r"inst_interact.norm1.\1"),
    (r"instance_conv\.norm_out\.(weight|bias)", r"inst_interact.norm2.\1"),
    (r"instance_conv\.fc_layer\.(weight|bias)", r"inst_interact.out_layer.\1"),
    (r"instance_conv\.fc_norm\.(weight|bias)", r"inst_interact.norm3.\1"),
    (r"instance_norm\.(weight|bias)", r"norm2.\1"),
    (r"ffn\.0\.(weight|bias)", r"ffn.0.\1"),
    (r"ffn\.2\.(weight|bias)", r"ffn.3.\1"),
    (r"ffn_norm\.(weight|bias)", r"norm3.\1"),
]
_BOX_HEAD_RULES = [
    (r"cls_fcs\.([01])\.(weight|bias)", r"cls_layers.0.\1.\2"),
    (r"fc_cls\.(weight|bias)", r"class_logits.\1"),
    (r"reg_fcs\.(\d+)\.([01])\.(weight|bias)", r"reg_layers.\1.\2.\3"),
    (r"fc_reg\.(weight|bias)", r"box_deltas.\1"),
    (r"time_mlp\.1\.(weight|bias)", r"time_mlp.1.\1"),
]
_IDIP_MASK_HEAD_RULES = [
    (r"instance_conv\.dynamic_layer\.(weight|bias)", r"dynamic.dynamic_layer.\1"),
    (r"instance_conv\.norm_in\.(weight|bias)", r"dynamic.norm1.\1"),
    (r"instance_conv\.norm_out\.(weight|bias)", r"dynamic.norm2.\1"),
    (r"upsample\.weight", r"upsample.weight"),
    (r"logits\.(weight|bias)", r"predictor.\1"),
]
_NECK_RULES = [  # FPN: the same names in detectron2 and here
    (r"(fpn_lateral\d|fpn_output\d|top_block\.p[67])\.(weight|bias)", r"\1.\2"),
]


def _apply(rules, name: str) -> str | None:
    for pattern, replacement in rules:
        if re.fullmatch(pattern, name):
            return re.sub(pattern, replacement, name)
    return None


def _backbone_key(key: str) -> str | None:
    """detectron2 ``backbone.*`` key -> ours (ResNet renamed to the torchvision layout)."""
    if key.startswith("backbone.bottom_up."):
        inner = detectron2_to_torchvision_name(key[len("backbone.bottom_up.") :])
        return None if inner is None else "backbone.bottom_up." + inner
    if key.startswith("backbone."):
        inner = _apply(_NECK_RULES, key[len("backbone.") :])
        return None if inner is None else "backbone." + inner
    return None


def _condinst_key(key: str) -> str | None:
    if key.startswith("backbone."):
        return _backbone_key(key)
    if key.startswith("proposal_generator.fcos_head."):
        return "fcos.head." + key[len("proposal_generator.fcos_head.") :]
    if key.startswith(("mask_branch.", "controller.")):
        return key
    return None


def _idip_key(key: str) -> str | None:
    if key.startswith("backbone."):
        return _backbone_key(key)
    if m := re.fullmatch(r"roi_head\.dynamic_heads\.(\d+)\.(.+)", key):
        inner = _apply(_STAGE_RULES, m[2])
        return None if inner is None else f"head.stages.{m[1]}.{inner}"
    if m := re.fullmatch(r"roi_head\.time_heads\.(\d+)\.time_emb\.([13])\.(weight|bias)", key):
        return f"head.time_encoders.{m[1]}.mlp.{m[2]}.{m[3]}"
    if key.startswith("roi_head.box_head."):
        inner = _apply(_BOX_HEAD_RULES, key[len("roi_head.box_head.") :])
        return None if inner is None else "head.box_head." + inner
    if m := re.fullmatch(r"roi_head\.mask_head\.convs\.(\d+)\.0\.weight", key):
        return f"mask_head.convs.{3 * int(m[1])}.weight"  # [conv, BN, ReLU] per layer here
    if m := re.fullmatch(r"roi_head\.mask_head\.convs\.(\d+)\.1\.(\w+)", key):
        return f"mask_head.convs.{3 * int(m[1]) + 1}.{m[2]}"
    if key.startswith("roi_head.mask_head."):
        inner = _apply(_IDIP_MASK_HEAD_RULES, key[len("roi_head.mask_head.") :])
        return None if inner is None else "mask_head." + inner
    return None


_IGNORED = {
    ADELAIDET_CONDINST: re.compile(r"mask_head\.(sizes_of_interest|_iter)"),
    IDIP_AUTHORS: re.compile(r"alphas_cumprod|pixel_mean|pixel_std"),
}
_RENAME: dict[str, Callable[[str], str | None]] = {
    ADELAIDET_CONDINST: _condinst_key,
    IDIP_AUTHORS: _idip_key,
}


def _tensor(value: Any, key: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    try:
        return torch.as_tensor(value).clone()
    except (TypeError, ValueError, RuntimeError) as err:
        raise ConfigError(
            f"checkpoint entry {key!r} is not a tensor ({type(value).__name__})"
        ) from err


def convert_authors_checkpoint(state: Mapping[str, Any]) -> Conversion:
    """Renames (and, where needed, transforms) an authors' state dict into our keys.

    Args:
        state: the authors' state dict (``data["model"]`` of their files).

    Returns:
        A :class:`Conversion`; ``unmapped`` lists keys no rule knows (callers treat that as an
        error: the checkpoint is not what its keys suggested).

    Raises:
        ConfigError: when the keys are of no known format.
    """
    fmt = detect_format(state.keys())
    if fmt is None:
        raise ConfigError(
            "the checkpoint is neither an AdelaiDet CondInst nor an IDIP authors' one"
        )
    out = Conversion(
        format=fmt, meta_architecture=META_ARCHITECTURE[fmt], settings=dict(REQUIRED_SETTINGS[fmt])
    )
    rename, ignored = _RENAME[fmt], _IGNORED[fmt]
    conv_biases = {}
    for key, value in state.items():
        if ignored.fullmatch(key):
            out.ignored.append(key)
            continue
        if fmt == IDIP_AUTHORS and (
            m := re.fullmatch(r"roi_head\.mask_head\.convs\.(\d+)\.0\.bias", key)
        ):
            conv_biases[int(m[1])] = (key, _tensor(value, key))
            continue
        target = rename(key)
        if target is None:
            if key.endswith("num_batches_tracked") and "bottom_up" in key:
                out.ignored.append(key)  # FrozenBN has no step counter
                continue
            out.unmapped.append(key)
            continue
        out.state[target] = _tensor(value, key)
        out.mapped += 1
    for layer, (key, bias) in sorted(conv_biases.items()):
        mean_key = f"mask_head.convs.{3 * layer + 1}.running_mean"
        if mean_key not in out.state:
            out.unmapped.append(key)
            continue
        out.state[mean_key] = out.state[mean_key] - bias.to(out.state[mean_key].dtype)
        out.folded.append(key)
    if out.folded:
        out.notes.append("mask-head convolution biases folded into the BN running means")
    if fmt == ADELAIDET_CONDINST:
        conv1 = "backbone.bottom_up.conv1.weight"
        if conv1 in out.state:
            out.state[conv1] = out.state[conv1].flip(1)
            out.notes.append("first convolution's input channels flipped: the model takes RGB")
    if fmt == IDIP_AUTHORS:
        for name, cfg_key in (("pixel_mean", "MODEL.PIXEL_MEAN"), ("pixel_std", "MODEL.PIXEL_STD")):
            if name in state:
                out.settings[cfg_key] = [
                    round(float(v), 4) for v in _tensor(state[name], name).flatten()
                ]
    return out


def _get(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(abs(float(x) - float(y)) < 1e-3 for x, y in zip(a, b))
    return a == b


def check_settings(conversion: Conversion, cfg, source: str) -> None:
    """Raises a one-line ConfigError naming every config value the weights need and lack."""
    if cfg.MODEL.META_ARCHITECTURE != conversion.meta_architecture:
        raise ConfigError(
            f"MODEL.WEIGHTS {source} is an {conversion.format} checkpoint, weights of "
            f"{'an' if conversion.meta_architecture == 'IDIP' else 'a'} "
            f"{conversion.meta_architecture} model, but MODEL.META_ARCHITECTURE is "
            f"{cfg.MODEL.META_ARCHITECTURE}"
        )
    wrong = [(k, v) for k, v in conversion.settings.items() if not _same(_get(cfg, k), v)]
    if wrong:
        overrides = " ".join(f"{k} {_format(v)}" for k, v in wrong)
        raise ConfigError(
            f"MODEL.WEIGHTS {source} is an {conversion.format} checkpoint, whose weights need "
            f"these settings: add `{overrides}` to the command line (or the config)"
        )


def _format(value) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(f"{float(v):g}" for v in value) + "]"
    return str(value)
