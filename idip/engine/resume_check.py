"""What changed in the config since the checkpoint a run resumes from, and whether it matters.

A resumed run promises the parameters of an uninterrupted one. That holds when only settings
that do not enter the computation changed (logging, checkpoint and evaluation periods, the
device, OUTPUT_DIR, ...); a change of the model, the data, the augmentation, the batch, the
optimizer or the seed breaks it. Every difference is logged; one that breaks the promise stops
the run unless it is explicitly allowed.
"""

from __future__ import annotations

from typing import Any

import yaml

from ..config import ConfigError

# Prefixes of config keys whose change makes a resumed run differ from an uninterrupted one.
EXACTNESS_KEYS = (
    "MODEL.",
    "INPUT.",
    "DATASETS.TRAIN",
    "DATASETS.CUSTOM",
    "DATASETS.ROOT",
    "SEED",
    "SOLVER.IMS_PER_BATCH",
    "SOLVER.GRAD_ACCUM_STEPS",
    "SOLVER.OPTIMIZER",
    "SOLVER.BASE_LR",
    "SOLVER.MOMENTUM",
    "SOLVER.WEIGHT_DECAY",
    "SOLVER.BETAS",
    "SOLVER.CLIP_GRADIENTS",
    "SOLVER.AMP",
    "SOLVER.BACKBONE_MULTIPLIER",
    "DATALOADER.FILTER_EMPTY_ANNOTATIONS",
    "DETERMINISTIC",
)
# Keys that may differ without saying anything (where the run lives, what it is loaded from).
_IGNORED = ("OUTPUT_DIR", "MODEL.WEIGHTS", "MODEL.DEVICE")


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def _parse(text: str | None) -> dict:
    try:
        parsed = yaml.safe_load(text or "") or {}
    except yaml.YAMLError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def stored_config_value(stored_text: str | None, key: str) -> Any:
    """The value of dotted ``key`` in a checkpoint's config text; None when absent or unreadable."""
    return _flatten(_parse(stored_text)).get(key)


def config_differences(stored_text: str, current_text: str) -> list[tuple[str, Any, Any]]:
    """(key, checkpoint value, current value) for every key that differs (sorted by key)."""
    stored = _flatten(_parse(stored_text))
    current = _flatten(_parse(current_text))
    missing = object()
    diffs = []
    for key in sorted(set(stored) | set(current)):
        if key in _IGNORED:
            continue
        a, b = stored.get(key, missing), current.get(key, missing)
        if a != b:
            diffs.append((key, None if a is missing else a, None if b is missing else b))
    return diffs


def breaks_exact_resume(key: str) -> bool:
    return any(
        key == k or key.startswith(k if k.endswith(".") else k + ".") or key == k.rstrip(".")
        for k in EXACTNESS_KEYS
    )


def check_resume_config(stored_text: str, current_text: str, path: str, allow: bool, log) -> None:
    """Logs every difference; raises a one-line ConfigError when one breaks the exact resume
    (unless ``allow``)."""
    diffs = config_differences(stored_text, current_text)
    for key, old, new in diffs:
        log(f"config differs from the checkpoint's: {key}: {old!r} -> {new!r}")
    breaking = [key for key, _, _ in diffs if breaks_exact_resume(key)]
    if breaking and not allow:
        raise ConfigError(
            f"resuming from {path} with a changed {', '.join(breaking)} would not continue the "
            "run as it was (the result would differ from an uninterrupted run): restore the "
            "checkpoint's values, or add --allow-config-change to continue anyway"
        )
