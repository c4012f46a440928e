"""benchmarks/make_tables.py: README tables from result files, "not measured" where nothing is."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def make_tables(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location(
        "make_tables", os.path.join(ROOT, "benchmarks", "make_tables.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (tmp_path / "results").mkdir()
    monkeypatch.setattr(module, "HERE", str(tmp_path))
    return module, tmp_path


def _write(tmp_path, name, data):
    with open(tmp_path / "results" / name, "w") as f:
        json.dump(data, f)


def test_cpu_only_results_leave_every_gpu_cell_not_measured(make_tables):
    module, tmp = make_tables
    _write(
        tmp,
        "cpu.json",
        {
            "device": "Test CPU",
            "device_kind": "cpu",
            "torch": "x",
            "cuda": None,
            "commit": "abc",
            "date": "d",
            "reps": 3,
            "peaks": {"copy_GB_per_s": 10.0, "matmul_TFLOP_per_s": 0.1},
            "rows": [
                {
                    "name": "op fwd",
                    "group": "g",
                    "pass": "fwd",
                    "time_ms": {"reference": 6.0, "ours": 2.0},
                    "speedup_vs_reference": 3.0,
                }
            ],
        },
    )
    _write(
        tmp,
        "model-cpu.json",
        {
            "model": True,
            "device": "Test CPU",
            "device_kind": "cpu",
            "image_size": [320, 512],
            "commit": "abc",
            "date": "d1",
            "reps": 3,
            "warmup": 1,
            "complete": False,
            "note": "small",
            "runs": [
                {"commit": "abc", "date": "d1", "reps": 3},
                {"commit": "def", "date": "d2", "reps": 2},
            ],
            "rows": [
                {
                    "model": "IDIP",
                    "ops": "idip kernels",
                    "mode": "train",
                    "batch": 2,
                    "dtype": "fp32",
                    "time_ms": 900.0,
                    "peak_memory_mb": None,
                    "commit": "def",
                    "date": "d2",
                    "reps": 2,
                    "warmup": 0,
                },
                {
                    "model": "IDIP",
                    "ops": "idip kernels",
                    "mode": "inference",
                    "batch": 1,
                    "dtype": "fp32",
                    "time_ms": 250.0,
                    "images_per_s": 4.0,
                    "detections_per_image": 100.0,
                },
                {
                    "model": "IDIP",
                    "ops": "reference ops",
                    "mode": "inference",
                    "batch": 1,
                    "dtype": "fp32",
                    "time_ms": 1000.0,
                    "images_per_s": 1.0,
                },
            ],
        },
    )
    text = module.render()
    ops_line = next(line for line in text.splitlines() if line.startswith("| op fwd"))
    # reference, torch.compile (not asked for), torchvision (no such op), ours, both speedups
    assert "| 6.000 | not measured | n/a | 2.000 | 3.00x | 3.00x |" in ops_line
    assert ops_line.count("not measured") == 1 + 6  # compile here; every GPU cell but the rate
    inference = next(line for line in text.splitlines() if line.startswith("| IDIP | inference"))
    assert "250.0 (4.00 img/s, 100 det/img)" in inference and "1000.0 (1.00 img/s)" in inference
    assert "| 4.00x |" in inference
    train = next(line for line in text.splitlines() if line.startswith("| IDIP | train"))
    assert train.count("not measured") == 2 + 3  # no reference row here, and no GPU
    assert "not every row was run" in text
    # each row's own run; rows without one (older files) belong to the file's first run
    assert (
        "measured: 1 row at commit def, d2, median of 2 after 0 warm-up; "
        "2 rows at commit abc, d1, median of 3 after 1 warm-up."
    ) in text
    # rows in a fixed order whatever the file's (training first there): inference before training
    assert text.index("| IDIP | inference") < text.index("| IDIP | train")


def test_ops_baselines_compiled_failed_and_missing(make_tables):
    module, tmp = make_tables
    row = {"group": "g", "pass": "fwd"}
    _write(
        tmp,
        "cpu.json",
        {
            "device": "Test CPU",
            "device_kind": "cpu",
            "commit": "abc",
            "reps": 3,
            "compiled_reference": True,
            "torchvision": None,
            "peaks": {"copy_GB_per_s": 10.0, "matmul_TFLOP_per_s": 0.1},
            "rows": [
                dict(
                    row,
                    name="compiles",
                    time_ms={"reference": 8.0, "compiled_reference": 4.0, "ours": 2.0},
                    speedup_vs_reference=4.0,
                    speedup_vs_compiled_reference=2.0,
                ),
                dict(
                    row,
                    name="breaks",
                    time_ms={"reference": 8.0, "compiled_reference": None, "ours": 1.0},
                    speedup_vs_reference=8.0,
                    errors={"compiled_reference": "BackendCompilerFailed: inductor said no"},
                ),
            ],
        },
    )
    _write(
        tmp,
        "cuda.json",
        {
            "device": "Test GPU",
            "device_kind": "cuda",
            "commit": "abc",
            "reps": 50,
            "compiled_reference": True,
            "torchvision": "0.0",
            "peaks": {"copy_GB_per_s": 1000.0, "matmul_TFLOP_per_s": 50.0},
            "rows": [
                dict(
                    row,
                    name="compiles",
                    time_ms={
                        "reference": 1.0,
                        "compiled_reference": 0.25,
                        "torchvision": 0.5,
                        "ours": 0.5,
                    },
                    speedup_vs_reference=2.0,
                )
            ],
        },
    )
    lines = module.render().splitlines()
    compiles = next(line for line in lines if line.startswith("| compiles"))
    # the CPU has no torchvision installed: not measured; the fastest baseline is the compiled one
    assert "| 8.000 | 4.000 | not measured | 2.000 | 4.00x | 2.00x |" in compiles
    # the GPU's fastest baseline (compile) beats ours: the speedup says so (below 1)
    assert "| 1.000 | 0.250 | 0.500 | 0.500 | 2.00x | 0.50x |" in compiles
    breaks = next(line for line in lines if line.startswith("| breaks"))
    assert (
        "| 8.000 | failed: BackendCompilerFailed | not measured | 1.000 | 8.00x | 8.00x |" in breaks
    )
    assert breaks.count("not measured") == 1 + 6  # torchvision here; the GPU has no such case


def test_main_rewrites_only_between_the_markers(make_tables):
    module, tmp = make_tables
    (tmp / "README.md").write_text(f"intro\n{module.BEGIN}\nold\n{module.END}\noutro\n")
    module.main()
    text = (tmp / "README.md").read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old" not in text
    assert "GPU (H100): not measured" in text
