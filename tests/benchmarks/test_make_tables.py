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
        "make_tables", os.path.join(ROOT, "benchmarks", "make_tables.py"))
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
    _write(tmp, "cpu.json", {
        "device": "Test CPU", "device_kind": "cpu", "torch": "x", "cuda": None, "commit": "abc",
        "date": "d", "reps": 3, "peaks": {"copy_GB_per_s": 10.0, "matmul_TFLOP_per_s": 0.1},
        "rows": [{"name": "op fwd", "group": "g", "pass": "fwd", "time_ms": {"reference": 6.0, "ours": 2.0},
                  "speedup_vs_reference": 3.0}],
    })
    _write(tmp, "model-cpu.json", {
        "model": True, "device": "Test CPU", "device_kind": "cpu", "image_size": [320, 512],
        "commit": "abc", "reps": 3, "complete": False, "note": "small",
        "runs": [{"commit": "abc", "date": "d1", "reps": 3}, {"commit": "def", "date": "d2", "reps": 2}],
        "rows": [
            {"model": "IDIP", "ops": "idip kernels", "mode": "inference", "batch": 1, "dtype": "fp32",
             "time_ms": 250.0, "images_per_s": 4.0},
            {"model": "IDIP", "ops": "reference ops", "mode": "inference", "batch": 1, "dtype": "fp32",
             "time_ms": 1000.0, "images_per_s": 1.0},
            {"model": "IDIP", "ops": "idip kernels", "mode": "train", "batch": 2, "dtype": "fp32",
             "time_ms": 900.0, "peak_memory_mb": None},
        ],
    })
    text = module.render()
    ops_line = next(line for line in text.splitlines() if line.startswith("| op fwd"))
    assert "| 6.000 | 2.000 | 3.00x |" in ops_line
    assert ops_line.count("not measured") == 3  # the GPU column: reference, ours, speedup
    inference = next(line for line in text.splitlines() if line.startswith("| IDIP | inference"))
    assert "250.0 (4.00 img/s)" in inference and "1000.0 (1.00 img/s)" in inference
    assert "| 4.00x |" in inference
    train = next(line for line in text.splitlines() if line.startswith("| IDIP | train"))
    assert train.count("not measured") == 2 + 3  # no reference row here, and no GPU
    assert "not every row was run" in text
    assert "measured in 2 runs (commit abc d1, 3 repetitions, commit def d2, 2 repetitions)" in text


def test_main_rewrites_only_between_the_markers(make_tables):
    module, tmp = make_tables
    (tmp / "README.md").write_text(f"intro\n{module.BEGIN}\nold\n{module.END}\noutro\n")
    module.main()
    text = (tmp / "README.md").read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old" not in text
    assert "GPU (H100): not measured" in text
