"""tools/gpu_check.sh --dry-run: every step that needs no GPU runs and the summary says so."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_dry_run_checks_every_step(tmp_path):
    out = tmp_path / "gpu-check"
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(
        ["bash", str(ROOT / "tools" / "gpu_check.sh"), str(out), "--dry-run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    summary = (out / "summary.md").read_text()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for step in (
        "build",
        "pytest -m cuda (collected only)",
        "exercise_kernels.py",
        "bench_ops.py (arguments checked)",
        "bench_model.py (arguments checked)",
    ):
        assert any(
            line.startswith(f"| {step}") and "| passed |" in line for line in summary.splitlines()
        ), (step, summary)
    # The collected CUDA tests include the op tests, and the kernels matched the CPU kernels.
    assert "tests/ops/test_dynamic_mask_head.py" in (out / "pytest.log").read_text()
    assert "every kernel ran on" in (out / "sanitizer.log").read_text()


def test_rejects_bad_arguments(tmp_path):
    proc = subprocess.run(
        ["bash", str(ROOT / "tools" / "gpu_check.sh"), str(tmp_path), "--fast"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "usage: tools/gpu_check.sh OUT_DIR [--dry-run]" in proc.stderr
