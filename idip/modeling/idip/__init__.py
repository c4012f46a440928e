"""IDIP: diffusion box denoising with a dynamic head and an RoI mask head."""
