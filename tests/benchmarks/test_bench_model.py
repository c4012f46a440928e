"""benchmarks/bench_model.py: rows saved as measured, --resume measures only what is missing."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def bench_model():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location(
            "bench_model", os.path.join(ROOT, "benchmarks", "bench_model.py")
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(os.path.join(ROOT, "benchmarks"))
    return module


# tiny images, one repetition: this checks the bookkeeping, not the speed
_ARGS = [
    "--device",
    "cpu",
    "--models",
    "CondInst",
    "--size",
    "64",
    "96",
    "--batches",
    "1",
    "--dtypes",
    "fp32",
    "--reps",
    "1",
    "--warmup",
    "0",
    "--no-train",
]


def test_resume_keeps_measured_rows_and_adds_only_missing_ones(bench_model, tmp_path):
    out = str(tmp_path / "model.json")
    bench_model.main(_ARGS + ["--out", out])
    with open(out) as f:
        first = json.load(f)
    keys = [bench_model.row_key(r) for r in first["rows"]]
    assert keys == [
        ("CondInst", "idip kernels", "inference", 1, "fp32"),
        ("CondInst", "reference ops", "inference", 1, "fp32"),
    ]
    assert all(r["time_ms"] > 0 for r in first["rows"])
    # random weights score under FCOS's threshold; the benchmark keeps every candidate so that
    # NMS and the mask head run, as with a trained model (at most POST_NMS_TOPK_TEST per image)
    assert all(0 < r["detections_per_image"] <= 100 for r in first["rows"])
    # both implementations run the same weights, so they find the same detections
    assert first["rows"][0]["detections_per_image"] == first["rows"][1]["detections_per_image"]
    assert all(r["commit"] == first["runs"][0]["commit"] and r["reps"] == 1 for r in first["rows"])
    assert first["complete"] is False  # bf16, batch 8, training and IDIP are missing

    # an earlier failure is measured again; a measured row is kept as it was
    first["rows"][1] = {
        **{k: first["rows"][1][k] for k in ("model", "ops", "mode", "batch", "dtype")},
        "error": "RuntimeError: injected",
    }
    with open(out, "w") as f:
        json.dump(first, f)
    bench_model.main(_ARGS + ["--out", out, "--resume"])
    with open(out) as f:
        second = json.load(f)
    assert second["rows"][0] == first["rows"][0]
    assert [bench_model.row_key(r) for r in second["rows"]] == keys
    assert "error" not in second["rows"][1] and second["rows"][1]["time_ms"] > 0
    assert [run["reps"] for run in second["runs"]] == [1, 1]
    assert second["runs"][1]["commit"] == first["runs"][0]["commit"]


def test_remeasure_replaces_the_selected_rows_and_keeps_the_others(bench_model, tmp_path):
    out = str(tmp_path / "model.json")
    kept = {
        "model": "IDIP",
        "ops": "idip kernels",
        "mode": "inference",
        "batch": 1,
        "dtype": "fp32",
        "time_ms": 123.0,
        "images_per_s": 8.1,
    }
    stale = {
        "model": "CondInst",
        "ops": "idip kernels",
        "mode": "inference",
        "batch": 1,
        "dtype": "fp32",
        "time_ms": -1.0,
        "images_per_s": -1.0,
    }
    import torch

    with open(out, "w") as f:
        json.dump(
            {
                "rows": [kept, stale],
                "device": "Test CPU",
                "device_kind": "cpu",
                "image_size": [64, 96],
                "torch": torch.__version__,
                "commit": "old",
                "reps": 3,
                "warmup": 1,
            },
            f,
        )
    bench_model.main(_ARGS + ["--out", out, "--resume", "--remeasure"])
    with open(out) as f:
        rows = json.load(f)["rows"]
    assert rows[0] == kept
    assert [bench_model.row_key(r) for r in rows[1:]] == [
        ("CondInst", "idip kernels", "inference", 1, "fp32"),
        ("CondInst", "reference ops", "inference", 1, "fp32"),
    ]
    assert all(r["time_ms"] > 0 and r["reps"] == 1 for r in rows[1:])


def test_resume_refuses_a_file_of_another_size(bench_model, tmp_path):
    out = tmp_path / "model.json"
    out.write_text(json.dumps({"rows": [], "device_kind": "cpu", "image_size": [320, 512]}))
    with pytest.raises(SystemExit, match=r"measured on 'cpu' at \[320, 512\]"):
        bench_model.main(_ARGS + ["--out", str(out), "--resume"])


def test_resume_refuses_a_file_of_another_torch(bench_model, tmp_path):
    out = tmp_path / "model.json"
    out.write_text(
        json.dumps({"rows": [], "device_kind": "cpu", "image_size": [64, 96], "torch": "1.0.0"})
    )
    with pytest.raises(SystemExit, match="measured with torch 1.0.0"):
        bench_model.main(_ARGS + ["--out", str(out), "--resume"])


def test_resume_names_an_unreadable_file(bench_model, tmp_path):
    out = tmp_path / "model.json"
    out.write_text("{not json")
    with pytest.raises(SystemExit, match="cannot read .*model.json"):
        bench_model.main(_ARGS + ["--out", str(out), "--resume"])
