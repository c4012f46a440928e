"""Loading pretrained ResNet (and FPN) weights from torchvision, detectron2 and Caffe2 checkpoints.

Three naming schemes are recognised and mapped onto this package's ResNet (torchvision names):

- torchvision: ``conv1.weight``, ``bn1.running_mean``, ``layer1.0.conv1.weight``,
  ``layer1.0.downsample.0.weight``, ``fc.*`` (ignored).
- detectron2: ``stem.conv1.weight``, ``stem.conv1.norm.weight``, ``res2.0.conv1.weight``,
  ``res2.0.conv1.norm.running_var``, ``res2.0.shortcut.weight``, usually in a ``.pkl`` holding
  ``{"model": {name: numpy array}, "__author__": ..., "matching_heuristics": ...}``; a full
  detectron2 model adds ``backbone.bottom_up.`` before these and ``backbone.fpn_lateral3.*``,
  ``backbone.fpn_output3.*``, ``backbone.top_block.p6.*`` for the FPN, which are loaded too when
  the target has an FPN.
- Caffe2 (the MSRA ImageNet ``R-50.pkl``/``R-101.pkl``): ``conv1_w``, ``res_conv1_bn_s``,
  ``res2_0_branch2a_w``, ``res2_0_branch1_bn_b``, ``fc1000_*`` (ignored).

MSRA/Caffe2 weights put the bottleneck stride on the first 1x1 conv, were trained on BGR images
with std 1, and store batch norms already folded into a scale and a shift (no running stats).
They need a ResNet built with ``stride_in_1x1=True``; the loader flips the stem's input channels
to RGB (this package always feeds RGB) and sets the missing running stats so the folded affine is
reproduced exactly. Set MODEL.PIXEL_STD to [1.0, 1.0, 1.0] for them.

Given the run's ``pixel_std`` (``load_weights`` passes MODEL.PIXEL_STD), the loader demands the
settings the weights were trained with: MSRA/Caffe2 weights need ``MODEL.RESNETS.STRIDE_IN_1X1
True`` and ``MODEL.PIXEL_STD [1.0, 1.0, 1.0]``; weights known to come from torchvision (a
torchvision classifier checkpoint with its ``fc``, or detectron2 names by author "torchvision")
need ``STRIDE_IN_1X1 False`` and torchvision's std, never [1, 1, 1]. A mismatch is one
CheckpointError naming the file, the format and the ``KEY VALUE`` overrides to add. Both kinds
share the RGB mean [123.675, 116.28, 103.53] (the MSRA BGR mean, flipped). Where to get the
files: :data:`TORCHVISION_FILES`, :data:`MSRA_URL` and :func:`pretrained_weights_hint`.

Files are read by :func:`idip.utils.checkpoint_file.read_checkpoint`, which cannot run code from
them.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ...utils.checkpoint_file import CheckpointError, read_checkpoint
from .fpn import FPN
from .resnet import ResNet

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------
# Where to get ImageNet weights, and the settings each kind needs
# ------------------------------------------------------------------------------------------------

# torchvision.models.ResNet{depth}_Weights: enum member -> file under TORCHVISION_URL.
TORCHVISION_URL = "https://download.pytorch.org/models/"
TORCHVISION_FILES = {
    18: {"IMAGENET1K_V1": "resnet18-f37072fd.pth"},
    34: {"IMAGENET1K_V1": "resnet34-b627a593.pth"},
    50: {"IMAGENET1K_V1": "resnet50-0676ba61.pth", "IMAGENET1K_V2": "resnet50-11ad3fa6.pth"},
    101: {"IMAGENET1K_V1": "resnet101-63fe2227.pth", "IMAGENET1K_V2": "resnet101-cd907fc2.pth"},
    152: {"IMAGENET1K_V1": "resnet152-394f9c45.pth", "IMAGENET1K_V2": "resnet152-f82ba261.pth"},
}
# detectron2's copy of the MSRA Caffe2 ImageNet models (its "ImageNetPretrained/MSRA/R-50.pkl").
MSRA_URL = "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/MSRA/R-{depth}.pkl"
MSRA_DEPTHS = (50, 101)
TORCHVISION_PIXEL_STD = [58.395, 57.12, 57.375]  # ImageNet std x 255 (RGB), the config default
CAFFE_PIXEL_STD = [1.0, 1.0, 1.0]
STRIDE_KEY, PIXEL_STD_KEY = "MODEL.RESNETS.STRIDE_IN_1X1", "MODEL.PIXEL_STD"
TORCHVISION_SETTINGS = f'{STRIDE_KEY} False {PIXEL_STD_KEY} "{TORCHVISION_PIXEL_STD}"'
MSRA_SETTINGS = f'{STRIDE_KEY} True {PIXEL_STD_KEY} "{CAFFE_PIXEL_STD}"'

_BACKBONE_FILE = re.compile(r"(?<![a-z0-9])(?:r|resnet)[-_]?(18|34|50|101|152)(?![0-9])", re.I)


def looks_like_backbone_weights(path: str | os.PathLike) -> bool:
    """True for paths under a ``pretrained`` folder or named like a ResNet (R-50, resnet101...)."""
    parts = os.path.normpath(os.fspath(path)).split(os.sep)
    in_pretrained = any(part.lower() == "pretrained" for part in parts[:-1])
    return in_pretrained or bool(_BACKBONE_FILE.search(parts[-1]))


def torchvision_url(depth: int, weights: str = "IMAGENET1K_V1") -> str:
    return TORCHVISION_URL + TORCHVISION_FILES[depth][weights]


def pretrained_weights_hint(path: str | os.PathLike, depth: int | None = None) -> str:
    """One line saying which ImageNet files work for a ResNet-``depth``, where to get them, the
    settings each needs, and a command that downloads one to ``path``; "" when ``path`` does not
    look like backbone weights. ``depth`` defaults to the one in the file name (else 50)."""
    path = os.fspath(path)
    if not looks_like_backbone_weights(path):
        return ""
    if depth is None:
        match = _BACKBONE_FILE.search(os.path.basename(path))
        depth = int(match[1]) if match else 50
    if depth not in TORCHVISION_FILES:
        return ""
    files = TORCHVISION_FILES[depth]
    other = [f"{name} {TORCHVISION_URL}{file}" for name, file in files.items()][1:]
    text = (
        f"ImageNet ResNet-{depth} weights that work: torchvision's ResNet{depth}_Weights."
        f"IMAGENET1K_V1 {torchvision_url(depth)}"
        + (f" (or {', '.join(other)})" if other else "")
        + f", with {TORCHVISION_SETTINGS} (the defaults)"
    )
    use_msra = depth in MSRA_DEPTHS and path.endswith(".pkl")
    if depth in MSRA_DEPTHS:
        text += (
            f"; or detectron2's MSRA R-{depth}.pkl {MSRA_URL.format(depth=depth)}, with "
            f"{MSRA_SETTINGS}"
        )
    url = MSRA_URL.format(depth=depth) if use_msra else torchvision_url(depth)
    target = path if use_msra or not path.endswith(".pkl") else path[: -len(".pkl")] + ".pth"
    folder = os.path.dirname(target)
    command = (f"mkdir -p {shlex.quote(folder)} && " if folder else "") + (
        f"curl -L -o {shlex.quote(target)} {url}"
    )
    if target != path:
        command += f", then set MODEL.WEIGHTS {shlex.quote(target)}"
    if use_msra:
        command += f", then add {MSRA_SETTINGS}"
    return f'{text}. To get one: {command} (README, "Pretrained backbones")'


# ------------------------------------------------------------------------------------------------
# Recognising and renaming keys
# ------------------------------------------------------------------------------------------------

_ROOT_PATTERNS = {
    "torchvision": re.compile(r"(conv1\.|bn1\.|layer[1-4]\.\d+\.|fc\.)"),
    "detectron2": re.compile(r"(stem\.|res[2-5]\.\d+\.)"),
    "caffe2": re.compile(r"(conv1_[wb]$|res_conv1_bn_|res[2-5]_\d+_branch|fc1000_)"),
}
# A prefix that itself ends inside a ResNet (a block, the stem) is never the backbone's root.
_INNER_PREFIX = re.compile(
    r"(^|\.)((layer[1-4]|res[2-5])\.\d+|stem|downsample(\.\d+)?|shortcut)\.$"
)
_FPN_KEY = re.compile(r"(fpn_lateral\d+|fpn_output\d+|top_block\.p[67])\.")
_NORM_FIELDS = {"s": "weight", "b": "bias", "rm": "running_mean", "riv": "running_var"}
_C2_BRANCH = {"1": "shortcut", "2a": "conv1", "2b": "conv2", "2c": "conv3"}


def _caffe2_to_detectron2(name: str) -> str | None:
    """Caffe2 blob name -> detectron2 name; None for blobs with no ResNet counterpart (fc)."""
    if m := re.fullmatch(r"conv1_([wb])", name):
        return "stem.conv1." + ("weight" if m[1] == "w" else "bias")
    if m := re.fullmatch(r"res_conv1_[bg]n_(s|b|rm|riv)", name):
        return "stem.conv1.norm." + _NORM_FIELDS[m[1]]
    if m := re.fullmatch(r"res(\d)_(\d+)_branch(1|2a|2b|2c)_([wb])", name):
        return f"res{m[1]}.{m[2]}.{_C2_BRANCH[m[3]]}." + ("weight" if m[4] == "w" else "bias")
    if m := re.fullmatch(r"res(\d)_(\d+)_branch(1|2a|2b|2c)_[bg]n_(s|b|rm|riv)", name):
        return f"res{m[1]}.{m[2]}.{_C2_BRANCH[m[3]]}.norm.{_NORM_FIELDS[m[4]]}"
    return None


def detectron2_to_torchvision_name(name: str) -> str | None:
    """detectron2 ResNet name -> torchvision name; None for names with no counterpart (fc)."""
    if m := re.fullmatch(r"stem\.conv1\.(weight|bias)", name):
        return f"conv1.{m[1]}"
    if m := re.fullmatch(r"stem\.conv1\.norm\.(\w+)", name):
        return f"bn1.{m[1]}"
    if m := re.fullmatch(r"res([2-5])\.(\d+)\.conv([1-3])\.(weight|bias)", name):
        return f"layer{int(m[1]) - 1}.{m[2]}.conv{m[3]}.{m[4]}"
    if m := re.fullmatch(r"res([2-5])\.(\d+)\.conv([1-3])\.norm\.(\w+)", name):
        return f"layer{int(m[1]) - 1}.{m[2]}.bn{m[3]}.{m[4]}"
    if m := re.fullmatch(r"res([2-5])\.(\d+)\.shortcut\.(weight|bias)", name):
        return f"layer{int(m[1]) - 1}.{m[2]}.downsample.0.{m[3]}"
    if m := re.fullmatch(r"res([2-5])\.(\d+)\.shortcut\.norm\.(\w+)", name):
        return f"layer{int(m[1]) - 1}.{m[2]}.downsample.1.{m[3]}"
    return None


def _is_ignorable(name: str) -> bool:
    """Checkpoint entries that are expected and never loaded: classifier, BN step counters."""
    return bool(
        re.match(r"(fc|stem\.fc|linear|fc1000_)", name)
        or name.endswith("num_batches_tracked")
        or name.endswith("_momentum")
    )


def _find_root(keys: list[str]) -> tuple[str, str]:
    """The prefix under which most keys look like ResNet keys, and the naming scheme there."""
    prefixes: Counter[str] = Counter()
    for key in keys:
        starts = [0] + [i + 1 for i, ch in enumerate(key) if ch == "."]
        for start in starts:
            prefix, rest = key[:start], key[start:]
            if _INNER_PREFIX.search(prefix):
                continue
            if any(p.match(rest) for p in _ROOT_PATTERNS.values()):
                prefixes[prefix] += 1
    if not prefixes:
        return "", ""
    best = max(prefixes.items(), key=lambda item: (item[1], -len(item[0])))[0]
    schemes: Counter[str] = Counter()
    for key in keys:
        if key.startswith(best):
            for scheme, pattern in _ROOT_PATTERNS.items():
                if pattern.match(key[len(best) :]) and not _is_ignorable(key[len(best) :]):
                    schemes[scheme] += 1
    if not schemes:
        return best, ""
    return best, schemes.most_common(1)[0][0]


def _unwrap(obj: Any, source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Returns (flat name -> tensor/array dict, metadata such as __author__)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a dict of weights, got {type(obj).__name__}")
    meta = {k: v for k, v in obj.items() if isinstance(k, str) and k.startswith("__")}
    if "matching_heuristics" in obj:
        meta["matching_heuristics"] = obj["matching_heuristics"]
    for wrapper in ("model", "state_dict", "blobs"):
        inner = obj.get(wrapper)
        if isinstance(inner, Mapping):
            return _unwrap_plain(inner), meta
    return _unwrap_plain(obj), meta


def _unwrap_plain(obj: Mapping) -> dict[str, Any]:
    return {str(k): v for k, v in obj.items()}


# ------------------------------------------------------------------------------------------------
# The report
# ------------------------------------------------------------------------------------------------


@dataclass
class LoadReport:
    """What ``load_backbone_weights`` did. Key names are the target module's own names.

    Attributes:
        source: file path, or "<state_dict>".
        format: "torchvision", "detectron2" or "caffe2".
        loaded: keys whose values were copied.
        missing: backbone keys the checkpoint did not provide (left as they were).
        unexpected: checkpoint keys with no place in the module (checkpoint names).
        mismatched: (key, checkpoint shape, module shape) for keys not loaded because of shape.
        ignored: checkpoint entries deliberately skipped (classifier, step counters).
        notes: conversions applied (channel flip, filled running stats, ...).
    """

    source: str
    format: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every backbone key was loaded and nothing was left over or mismatched."""
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        text = (
            f"loaded {len(self.loaded)} tensors from {self.format} weights {self.source}: "
            f"{len(self.missing)} missing, {len(self.unexpected)} unexpected, "
            f"{len(self.mismatched)} shape-mismatched, {len(self.ignored)} ignored"
        )
        details = []
        if self.missing:
            details.append("missing " + _abbreviate(self.missing))
        if self.unexpected:
            details.append("unexpected " + _abbreviate(self.unexpected))
        if self.mismatched:
            details.append(
                "mismatched "
                + _abbreviate([f"{k} {list(a)} vs {list(b)}" for k, a, b in self.mismatched])
            )
        return text + (f" ({'; '.join(details)})" if details else "")


def _abbreviate(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... (+{len(names) - limit})" if len(names) > limit else "")


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------


def _find_target(module: nn.Module) -> tuple[str, ResNet, str | None, FPN | None]:
    """(prefix, ResNet, FPN prefix, FPN) inside ``module``; prefixes end with '.' or are ''."""
    found = [(name, m) for name, m in module.named_modules() if isinstance(m, ResNet)]
    if not found:
        raise CheckpointError(
            f"load_backbone_weights: no ResNet found inside the given {type(module).__name__}"
        )
    if len(found) > 1:
        raise CheckpointError(
            "load_backbone_weights: the module holds several ResNets "
            f"({[n or '<root>' for n, _ in found]}); pass the one to load"
        )
    resnet_name, resnet = found[0]
    fpn_name, fpn = None, None
    for name, m in module.named_modules():
        if isinstance(m, FPN) and m.bottom_up is resnet:
            fpn_name, fpn = name, m
    prefix = resnet_name + "." if resnet_name else ""
    fpn_prefix = None if fpn is None else (fpn_name + "." if fpn_name else "")
    return prefix, resnet, fpn_prefix, fpn


def _caffe_style(
    scheme: str, meta: dict[str, Any], names: list[str], keys: list[str], target_norm: str
) -> bool | None:
    """True for MSRA-style weights (stride in the 1x1), False for torchvision-style ones (stride
    in the 3x3), None when the checkpoint does not tell."""
    if scheme == "caffe2":
        # Detectron's GroupNorm ImageNet models (FAIR, "_gn_" blobs) put the stride in the 3x3.
        return None if any("_gn_" in k for k in keys) else True
    if scheme == "torchvision":
        return False
    author = str(meta.get("__author__", "")).lower()
    if "msra" in author or "caffe2" in author:
        return True
    if author == "torchvision":
        return False
    has_norm = any(".norm.weight" in n for n in names)
    has_stats = any(n.endswith(".norm.running_mean") for n in names)
    if has_norm and not has_stats and target_norm not in ("GN", ""):
        return True  # batch norms folded into scale and shift: the MSRA release format
    return None


def _as_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.array(value, copy=True))
    return None


def load_backbone_weights(
    module: nn.Module,
    path_or_state_dict: str | os.PathLike | Mapping,
    pixel_std: Sequence[float] | None = None,
) -> LoadReport:
    """Loads pretrained backbone weights into the ResNet (and FPN) found in ``module``.

    Args:
        module: a ResNet, an FPN over a ResNet (keys under ``bottom_up.``), or a whole model
            holding exactly one ResNet anywhere.
        path_or_state_dict: a ``.pth``/``.pt`` (torchvision) or ``.pkl`` (detectron2, Caffe2)
            file, or an already-loaded dict (optionally wrapped in "model"/"state_dict").
        pixel_std: the run's MODEL.PIXEL_STD, checked against the weights' convention; None
            skips that check (a note then says what MSRA/Caffe2 weights need).

    Returns:
        a LoadReport; its one-line ``str`` is also logged. Keys with the wrong shape are reported
        and not loaded; the rest of the module is left untouched.

    Raises:
        CheckpointError: missing or unreadable file, no ResNet weights recognised, or
            a stride convention (``stride_in_1x1``) or ``pixel_std`` that does not match the
            weights (the message names the ``KEY VALUE`` overrides to set).
    """
    if isinstance(path_or_state_dict, Mapping):
        source, raw = "<state_dict>", path_or_state_dict
    else:
        source = f"'{os.fspath(path_or_state_dict)}'"
        raw = read_checkpoint(path_or_state_dict)
    weights, meta = _unwrap(raw, source)

    prefix, resnet, fpn_prefix, fpn = _find_target(module)
    root, scheme = _find_root(list(weights))
    if not scheme:
        raise CheckpointError(
            f"{source}: no ResNet weights recognised (torchvision 'layer1.0.conv1.weight', "
            f"detectron2 'res2.0.conv1.weight' or Caffe2 'res2_0_branch2a_w' names); first keys: "
            f"{list(weights)[:5]}"
        )
    report = LoadReport(source=source, format=scheme)

    # checkpoint key -> (module key relative to the ResNet or the FPN, the owning module)
    plan: dict[str, tuple[str, nn.Module]] = {}
    detectron2_names: list[str] = []
    fpn_root = root[: -len("bottom_up.")] if root.endswith("bottom_up.") else None
    for key, value in weights.items():
        if not isinstance(value, (torch.Tensor, np.ndarray)):
            report.ignored.append(key)
            continue
        in_fpn = fpn_root is not None and key.startswith(fpn_root)
        if in_fpn and _FPN_KEY.match(key[len(fpn_root) :]):
            if fpn is None:
                report.unexpected.append(key)
            else:
                plan[key] = (key[len(fpn_root) :], fpn)
            continue
        if not key.startswith(root):
            report.unexpected.append(key)
            continue
        name = key[len(root) :]
        if _is_ignorable(name):
            report.ignored.append(key)
            continue
        if scheme == "caffe2":
            name = _caffe2_to_detectron2(name)
        if name is not None and scheme in ("caffe2", "detectron2"):
            detectron2_names.append(name)
            name = detectron2_to_torchvision_name(name)
        if name is None:
            report.unexpected.append(key)
        else:
            plan[key] = (name, resnet)

    caffe_style = _caffe_style(scheme, meta, detectron2_names, list(weights), resnet.norm)
    # Caffe2-era weights were trained on BGR images with pixel std 1 and store folded norms.
    caffe_input = caffe_style is True or scheme == "caffe2"
    # This package's own ResNet also uses torchvision names, whatever its stride convention, so
    # torchvision names prove torchvision weights only with torchvision's classifier next to them.
    has_classifier = any(k.startswith(root + "fc.") for k in weights)
    torchvision_proven = caffe_style is False and (scheme != "torchvision" or has_classifier)
    _check_settings(source, scheme, caffe_style, caffe_input, torchvision_proven, resnet, pixel_std)
    bottleneck = resnet.depth >= 50
    if caffe_style is False and not torchvision_proven and bottleneck and resnet.stride_in_1x1:
        report.notes.append(
            "WARNING: torchvision-named weights (torchvision models put the bottleneck "
            "stride on the 3x3 conv) loaded into a ResNet with stride_in_1x1=True"
        )
    if caffe_style is None and scheme == "detectron2" and bottleneck:
        report.notes.append(
            f"stride convention of {source} unknown (author {meta.get('__author__')!r}); "
            f"assumed it matches stride_in_1x1={resnet.stride_in_1x1}"
        )

    targets = {id(resnet): _named_tensors(resnet), id(fpn): _named_tensors(fpn) if fpn else {}}
    full_name = {id(resnet): prefix, id(fpn): fpn_prefix}
    loaded_rel: dict[int, set[str]] = {id(resnet): set(), id(fpn): set()}
    with torch.no_grad():
        for key, (name, owner) in plan.items():
            target = targets[id(owner)].get(name)
            if target is None:
                report.unexpected.append(key)
                continue
            value = _as_tensor(weights[key])
            if caffe_input and owner is resnet and name == "conv1.weight" and value.dim() == 4:
                value = value.flip(1)  # BGR -> RGB input channels
                report.notes.append("flipped conv1 input channels from BGR to RGB")
            if tuple(value.shape) != tuple(target.shape):
                report.mismatched.append(
                    (full_name[id(owner)] + name, tuple(value.shape), tuple(target.shape))
                )
                continue
            target.copy_(value.to(dtype=target.dtype))
            loaded_rel[id(owner)].add(name)
            report.loaded.append(full_name[id(owner)] + name)

        if caffe_input:
            filled = _fill_folded_norm_stats(resnet, loaded_rel[id(resnet)])
            if filled:
                report.notes.append(
                    f"set running_mean=0, running_var=1-eps in {filled} norms (Caffe2 stores "
                    "batch norms folded into scale and shift)"
                )
            if pixel_std is None:  # else _check_settings has checked it
                report.notes.append(
                    "weights expect inputs with pixel std 1: set MODEL.PIXEL_STD to [1.0, 1.0, 1.0]"
                )

    checked = [resnet] + ([fpn] if any(o is fpn for _, o in plan.values()) else [])
    for owner in checked:  # an FPN the checkpoint says nothing about keeps its fresh init quietly
        for name in targets[id(owner)]:
            if name not in loaded_rel[id(owner)] and not name.endswith("num_batches_tracked"):
                report.missing.append(full_name[id(owner)] + name)

    _log(report)
    return report


def _same(values: Sequence[float], expected: Sequence[float]) -> bool:
    values = [float(v) for v in values]
    return len(values) == len(expected) and all(abs(v - e) < 1e-3 for v, e in zip(values, expected))


def _check_settings(
    source: str,
    scheme: str,
    caffe_style: bool | None,
    caffe_input: bool,
    torchvision_proven: bool,
    resnet: ResNet,
    pixel_std: Sequence[float] | None,
) -> None:
    """Raises one CheckpointError naming every setting the weights' convention needs and lacks."""
    bottleneck = resnet.depth >= 50
    wrong: list[str] = []  # what is set now
    fix: list[str] = []  # KEY VALUE to set instead
    if caffe_input:
        kind = (
            "MSRA/Caffe2-style weights (bottleneck stride on the first 1x1 conv, trained on BGR "
            "input with pixel std 1)"
            if caffe_style
            else "Caffe2 weights (trained on BGR input with pixel std 1)"
        )
        if caffe_style and bottleneck and not resnet.stride_in_1x1:
            wrong.append("the ResNet is built with stride_in_1x1=False")
            fix.append(f"{STRIDE_KEY} True")
        if pixel_std is not None and not _same(pixel_std, CAFFE_PIXEL_STD):
            wrong.append(f"{PIXEL_STD_KEY} is {[float(v) for v in pixel_std]}")
            fix.append(f'{PIXEL_STD_KEY} "{CAFFE_PIXEL_STD}"')
    elif torchvision_proven:
        kind = (
            "torchvision-style weights (bottleneck stride on the 3x3 conv, trained on RGB input "
            "normalised by the ImageNet std)"
        )
        if bottleneck and resnet.stride_in_1x1:
            wrong.append("the ResNet is built with stride_in_1x1=True")
            fix.append(f"{STRIDE_KEY} False")
        if pixel_std is not None and _same(pixel_std, CAFFE_PIXEL_STD):
            wrong.append(f"{PIXEL_STD_KEY} is {CAFFE_PIXEL_STD} (the Caffe2 value)")
            fix.append(f'{PIXEL_STD_KEY} "{TORCHVISION_PIXEL_STD}"')
    else:
        return
    if wrong:
        raise CheckpointError(
            f"{source} holds {kind}, in {scheme} names, but "
            f"{' and '.join(wrong)}: set {' '.join(fix)} (command line or config)"
        )


def _named_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    tensors = dict(module.named_parameters())
    tensors.update(dict(module.named_buffers()))
    if isinstance(module, FPN):
        # The FPN's bottom-up ResNet is loaded through its own entry.
        tensors = {k: v for k, v in tensors.items() if not k.startswith("bottom_up.")}
    return tensors


def _fill_folded_norm_stats(resnet: ResNet, loaded: set[str]) -> int:
    """Sets mean 0, var 1-eps where a norm got weight/bias but no running stats; returns count."""
    count = 0
    for name, norm in resnet.named_modules():
        if not hasattr(norm, "running_var") or not isinstance(norm.running_var, torch.Tensor):
            continue
        if f"{name}.weight" in loaded and f"{name}.running_var" not in loaded:
            norm.running_mean.zero_()
            # 1 - eps makes weight / sqrt(var + eps) equal to the stored scale exactly.
            norm.running_var.fill_(1.0 - norm.eps)
            loaded.update({f"{name}.running_mean", f"{name}.running_var"})
            count += 1
    return count


def _log(report: LoadReport) -> None:
    level = logging.INFO if report.ok else logging.WARNING
    logger.log(level, "%s", report)
    for note in report.notes:
        logger.log(
            logging.WARNING if note.startswith("WARNING") else logging.INFO,
            "backbone weights: %s",
            note,
        )
