"""IDIP: diffusion box denoising with a dynamic head and an RoI mask head."""

from . import detector  # noqa: F401  (registers META_ARCHITECTURE "IDIP")
