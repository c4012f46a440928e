"""Benchmark cases, one module per op group; each exposes ``cases(device) -> list[Case]``."""
