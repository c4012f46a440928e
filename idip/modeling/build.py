"""``MODEL.META_ARCHITECTURE`` -> model class registry and ``build_model``."""

from __future__ import annotations

import difflib
from typing import Callable

import torch
from torch import nn

from ..config import ConfigError

META_ARCH_REGISTRY: dict[str, type[nn.Module]] = {}


def register_meta_arch(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: makes ``name`` a valid ``MODEL.META_ARCHITECTURE``.

    A class with a ``from_config(cfg)`` classmethod is built as ``cls(**cls.from_config(cfg))``
    (its constructor takes modules and values, not a config: detectron2's convention); any other
    as ``cls(cfg)``.
    """

    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        if name in META_ARCH_REGISTRY and META_ARCH_REGISTRY[name] is not cls:
            raise ValueError(f"meta architecture '{name}' is registered twice")
        META_ARCH_REGISTRY[name] = cls
        return cls

    return wrap


def resolve_device(cfg) -> torch.device:
    """``MODEL.DEVICE``, with "auto" meaning cuda when a GPU is visible, else cpu."""
    name = cfg.MODEL.DEVICE
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"config key 'MODEL.DEVICE' has an invalid device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"config key 'MODEL.DEVICE' is {name!r} but no CUDA GPU is visible; use 'cpu' or 'auto'"
        )
    return device


def build_model(cfg) -> nn.Module:
    """Builds ``cfg.MODEL.META_ARCHITECTURE`` and moves it to ``MODEL.DEVICE``.

    In training mode ``model(batch)`` returns a dict of losses; in eval mode a list with one dict
    per image (``boxes`` [K,4] xyxy in original image coordinates, ``scores`` [K], ``labels`` [K],
    ``masks`` [K,H,W] bool).
    """
    name = cfg.MODEL.META_ARCHITECTURE
    if name not in META_ARCH_REGISTRY:
        close = difflib.get_close_matches(name, list(META_ARCH_REGISTRY), n=2, cutoff=0.3)
        hint = f"; did you mean: {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"config key 'MODEL.META_ARCHITECTURE' is {name!r}, which is not a known model "
            f"(known: {', '.join(sorted(META_ARCH_REGISTRY))}){hint}"
        )
    cls = META_ARCH_REGISTRY[name]
    model = cls(**cls.from_config(cfg)) if hasattr(cls, "from_config") else cls(cfg)
    return model.to(resolve_device(cfg))
