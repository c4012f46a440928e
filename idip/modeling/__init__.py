"""Models: backbones, IDIP and CondInst; ``build_model(cfg)`` builds the one the config names."""

from .build import META_ARCH_REGISTRY, build_model, register_meta_arch

__all__ = ["META_ARCH_REGISTRY", "build_model", "register_meta_arch"]
