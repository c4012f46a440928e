"""Benchmarks every idip.ops op against its reference formulation.

Usage:
    python benchmarks/bench_ops.py --device cpu --out benchmarks/results/cpu.json
    python benchmarks/bench_ops.py --device cuda --only roi_align nms

Each row: the reference (eager PyTorch, the anchors' way), optional extra baselines
(torchvision's ops, torch.compile of the reference), our kernel, the speedup, and the achieved
bandwidth or FLOP rate with its fraction of the device peak measured in the same run (a large copy
and a large matmul). Times are medians over many repetitions after warm-up, taken with CUDA events
on a GPU.

Cases live in benchmarks/cases/<group>.py; each module exposes ``cases(device) -> list[Case]``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import pkgutil
import platform
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from timing import Case, device_name, measure_peaks, time_fn  # noqa: E402


def _git_commit() -> str:
    try:
        return subprocess.check_output(
            ["git", "rev-parse", "--short", "HEAD"], cwd=os.path.dirname(__file__), text=True
        ).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def load_cases(device: str, only: list[str] | None) -> list[Case]:
    import cases as cases_pkg

    found: list[Case] = []
    for info in sorted(pkgutil.iter_modules(cases_pkg.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"cases.{info.name}")
        for case in module.cases(device):
            if not only or any(word in case.name for word in only):
                found.append(case)
    return found


def compiled(fn):
    """``torch.compile`` of a reference implementation (a fresh compile per case; recompiles on
    dynamic shapes are left to torch). Compile time is spent in the warm-up, never timed."""
    import torch._dynamo

    torch._dynamo.reset()
    return torch.compile(fn)


def _torchvision_version() -> str | None:
    try:
        import torchvision
    except ImportError:
        return None
    return torchvision.__version__


def run(
    device: str, only: list[str] | None, reps: int, warmup: int, compile_reference: bool = False
) -> dict:
    peaks = measure_peaks(device)
    rows = []
    for case in load_cases(device, only):
        print(f"[bench] {case.name} ...", flush=True)
        row = {"name": case.name, "group": case.group, "pass": case.pass_kind, "note": case.note}
        inputs = case.setup()
        times = {}
        impls = dict(case.impls)
        if compile_reference:
            impls["compiled_reference"] = compiled(case.impls["reference"])
        for label, fn in impls.items():
            try:
                times[label] = time_fn(lambda: fn(inputs), device, reps=reps, warmup=warmup)
            except Exception as err:  # a baseline that does not run here (e.g. compile) is reported
                times[label] = None
                row.setdefault("errors", {})[label] = f"{type(err).__name__}: {err}"[:300]
        row["time_ms"] = times
        ours = times.get("ours")
        ref = times.get("reference")
        row["speedup_vs_reference"] = (ref / ours) if ours and ref else None
        for label in impls:
            if label not in ("ours", "reference") and times.get(label) and ours:
                row[f"speedup_vs_{label}"] = times[label] / ours
        if ours and case.bytes:
            gbps = case.bytes / (ours * 1e-3) / 1e9
            row["GB_per_s"] = gbps
            row["fraction_of_peak_bandwidth"] = gbps / peaks["copy_GB_per_s"]
        if ours and case.flops:
            tflops = case.flops / (ours * 1e-3) / 1e12
            row["TFLOP_per_s"] = tflops
            row["fraction_of_peak_flops"] = tflops / peaks["matmul_TFLOP_per_s"]
        rows.append(row)
    return {
        "device": device_name(device),
        "device_kind": device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "torchvision": _torchvision_version(),  # None: its baselines were not run
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "commit": _git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "reps": reps,
        "warmup": warmup,
        "compiled_reference": compile_reference,
        "peaks": peaks,
        "rows": rows,
    }


def print_table(result: dict) -> None:
    print(f"\n{result['device']} | torch {result['torch']} | commit {result['commit']}")
    print(
        f"peaks: copy {result['peaks']['copy_GB_per_s']:.1f} GB/s, "
        f"matmul {result['peaks']['matmul_TFLOP_per_s']:.2f} TFLOP/s"
    )
    header = f"{'case':58s} {'reference':>10s} {'ours':>10s} {'speedup':>8s}  rate"
    print(header)
    print("-" * len(header))
    for row in result["rows"]:
        t = row["time_ms"]
        ref = f"{t['reference']:.3f}" if t.get("reference") else "n/a"
        ours = f"{t['ours']:.3f}" if t.get("ours") else "n/a"
        sp = f"{row['speedup_vs_reference']:.2f}x" if row.get("speedup_vs_reference") else "n/a"
        rate = ""
        if row.get("GB_per_s"):
            rate = f"{row['GB_per_s']:.1f} GB/s ({100 * row['fraction_of_peak_bandwidth']:.0f}%)"
        elif row.get("TFLOP_per_s"):
            rate = f"{row['TFLOP_per_s']:.3f} TFLOP/s ({100 * row['fraction_of_peak_flops']:.0f}%)"
        extra = "".join(
            f"  {k[len('speedup_vs_') :]}: {v:.2f}x"
            for k, v in row.items()
            if k.startswith("speedup_vs_") and k != "speedup_vs_reference" and v
        )
        print(f"{row['name']:58s} {ref:>10s} {ours:>10s} {sp:>8s}  {rate}{extra}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument(
        "--only", nargs="*", help="run only cases whose name contains one of these words"
    )
    parser.add_argument(
        "--reps", type=int, default=None, help="timed repetitions (default 50 cuda, 10 cpu)"
    )
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument(
        "--compile-reference",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time torch.compile of each reference (default: on for cuda, off for cpu, where "
        "inductor's C++ compile of every case takes minutes on a small machine)",
    )
    args = parser.parse_args(argv)
    on_cuda = args.device.startswith("cuda")
    reps = args.reps or (50 if on_cuda else 10)
    warmup = args.warmup if args.warmup is not None else (10 if on_cuda else 2)
    compile_reference = on_cuda if args.compile_reference is None else args.compile_reference
    result = run(args.device, args.only, reps, warmup, compile_reference)
    print_table(result)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
