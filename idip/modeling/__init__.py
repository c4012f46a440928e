"""Models: backbones, IDIP and CondInst; ``build_model(cfg)`` builds the one the config names."""

from .build import META_ARCH_REGISTRY, build_model, register_meta_arch, resolve_device

# The model packages register themselves with @register_meta_arch when imported, so the
# registry is imported first and they after it.
from . import condinst, idip  # noqa: E402, F401  isort: skip

__all__ = ["META_ARCH_REGISTRY", "build_model", "register_meta_arch", "resolve_device"]
