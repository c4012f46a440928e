"""Timing helpers shared by the benchmarks: median timings, device peaks, the Case record."""

from __future__ import annotations

import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch


@dataclass
class Case:
    """One benchmark row.

    Attributes:
        name: unique row name, e.g. "roi_align 7x7 fwd (B=2, K=600, C=256)".
        group: op group, e.g. "roi_align".
        pass_kind: "fwd" or "fwd+bwd".
        setup: builds the inputs once (on the benchmark's device), returned to every impl.
        impls: label -> fn(inputs); "reference" and "ours" are required, others are extra
            baselines (e.g. "torchvision", "compiled_reference").
        bytes: bytes the op must move at least (for the bandwidth column), or 0.
        flops: floating-point operations of the op (for the FLOP-rate column), or 0.
        note: free text shown in the JSON (e.g. how the sizes were chosen).
    """

    name: str
    group: str
    pass_kind: str
    setup: Callable[[], Any]
    impls: dict[str, Callable[[Any], Any]]
    bytes: float = 0.0
    flops: float = 0.0
    note: str = ""
    extra: dict = field(default_factory=dict)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], Any], device: str, reps: int = 50, warmup: int = 10) -> float:
    """Median wall time of ``fn()`` in milliseconds (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    if device.startswith("cuda"):
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measure_peaks(device: str) -> dict:
    """Measured copy bandwidth (GB/s, read+write) and float32 matmul rate (TFLOP/s)."""
    big = 256 * 2**20 if device.startswith("cuda") else 64 * 2**20  # bytes
    src = torch.empty(big // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    t_copy = time_fn(lambda: dst.copy_(src), device, reps=20, warmup=3)
    n = 8192 if device.startswith("cuda") else 1024
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    t_mm = time_fn(lambda: a @ b, device, reps=10, warmup=2)
    return {
        "copy_GB_per_s": 2 * big / (t_copy * 1e-3) / 1e9,
        "matmul_TFLOP_per_s": 2 * n**3 / (t_mm * 1e-3) / 1e12,
        "matmul_size": n,
        "copy_bytes": big,
    }


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return platform.processor() or "cpu"
