#!/usr/bin/env bash
# One call that verifies a GPU: build for sm_90, the CUDA tests, compute-sanitizer, benchmarks.
#
#   tools/gpu_check.sh OUT_DIR            on a machine with an NVIDIA GPU (Hopper: sm_90)
#   tools/gpu_check.sh OUT_DIR --dry-run  anywhere: checks every step but the GPU ones
#
# Steps, each with its own time limit inside an overall budget (IDIP_GPU_CHECK_SECONDS, default
# 470 s, so that the whole call fits 8 minutes with the machine's start):
#   1. build idip._C with FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16
#   2. pytest -m cuda (per-test timeout when pytest-timeout is installed); without pycocotools
#      the test modules that import it cannot be collected: they are listed, not counted as run
#   3. compute-sanitizer memcheck and racecheck on tools/exercise_kernels.py (every kernel,
#      forward and backward, every dtype, compared with the CPU kernels)
#   4. benchmarks/bench_ops.py and bench_model.py --device cuda, written to benchmarks/results/
# OUT_DIR gets summary.md (what ran, how long, what passed), one log per step and the two result
# files; the exit status is 0 only when every step passed. Python is $PYTHON (default python3).
set -uo pipefail

usage() { echo "usage: tools/gpu_check.sh OUT_DIR [--dry-run]" >&2; exit 2; }
[[ $# -ge 1 ]] || usage
OUT=$1
DRY=0
if [[ $# -ge 2 ]]; then [[ $2 == --dry-run ]] || usage; DRY=1; fi
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
BUDGET=${IDIP_GPU_CHECK_SECONDS:-470}
T0=$(date +%s)
SUMMARY=$OUT/summary.md
FAILED=0
ROWS=()

now() { date +%s; }

# run_step NAME CAP_SECONDS LOG COMMAND...: runs COMMAND with a limit of min(CAP, what is left
# of the budget), its output in $OUT/LOG, and records a row of the summary.
run_step() {
  local name=$1 cap=$2 log=$3; shift 3
  local left=$((BUDGET - ($(now) - T0)))
  local limit=$((cap < left ? cap : left))
  if ((limit < 10)); then
    ROWS+=("| $name | not run: out of time | 0 | |")
    FAILED=1
    return 1
  fi
  local start rc status
  start=$(now)
  {
    echo "\$ $*"
    timeout --kill-after=10 "$limit" "$@"
  } >>"$OUT/$log" 2>&1
  rc=$?
  if ((rc == 0)); then
    status=passed
  elif ((rc == 124 || rc == 137)); then
    status="failed: over its ${limit} s"
    FAILED=1
  else
    status="failed (exit $rc)"
    FAILED=1
  fi
  ROWS+=("| $name | $status | $(($(now) - start)) | $log |")
  echo "[gpu_check] $name: $status ($(($(now) - start)) s)"
  return $rc
}

# note NAME TEXT: a row of the summary for a step that was checked without running it.
note() { ROWS+=("| $1 | $2 | 0 | |"); echo "[gpu_check] $1: $2"; }

has_module() { "$PY" -c "import $1" >/dev/null 2>&1; }

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
torch_info=$("$PY" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)' 2>&1)
if ((DRY)); then
  device="dry run (no GPU used)"
else
  device=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1)
fi
slug=$("$PY" - "$device" <<'PY'
import re, sys
name = sys.argv[1].split(",")[0].strip().lower()
print(re.sub(r"[^a-z0-9]+", "-", name).strip("-") or "gpu")
PY
)

# ---- 1. build -------------------------------------------------------------------------------
if ((DRY)); then
  run_step "build (checked: setup.py compiles, kernels present)" 60 build.log \
    bash -c "'$PY' -m py_compile setup.py && ls csrc/cuda/*.cu && command -v nvcc || echo 'nvcc: not on PATH here'"
else
  FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16 \
    run_step "build for sm_90" 200 build.log "$PY" setup.py build_ext --inplace
  "$PY" -c "import idip.ops as o; assert o.has_cuda_kernels(), 'idip._C has no CUDA kernels'" \
    >>"$OUT/build.log" 2>&1 || { ROWS+=("| CUDA kernels registered | failed | 0 | build.log |"); FAILED=1; }
fi

# ---- 2. the CUDA tests -----------------------------------------------------------------------
pytest_args=(-q -m cuda tests -p no:cacheprovider -o addopts="" -rfE)
if has_module pytest_timeout; then pytest_args+=(--timeout=120); fi
if ! has_module pycocotools; then pytest_args+=(--continue-on-collection-errors); fi
if ((DRY)); then
  run_step "pytest -m cuda (collected only)" 120 pytest.log \
    "$PY" -m pytest --collect-only "${pytest_args[@]}"
else
  run_step "pytest -m cuda" 150 pytest.log \
    "$PY" -m pytest "${pytest_args[@]}" --junitxml="$OUT/.pytest.xml"
  # Without pycocotools, collection errors of the modules that import it are expected: the step
  # passes when nothing else failed, and the summary names those modules.
  "$PY" - "$OUT/.pytest.xml" >>"$OUT/pytest.log" 2>&1 <<'PY' && ROWS+=("| pytest -m cuda, counted | passed | 0 | pytest.log |") || { ROWS+=("| pytest -m cuda, counted | failed | 0 | pytest.log |"); FAILED=1; }
import sys, xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError) as err:
    sys.exit(f"[gpu_check] no junit report ({err})")
passed = failed = skipped = 0
uncollectable = []
for case in root.iter("testcase"):
    kinds = {child.tag for child in case}
    message = " ".join((c.get("message") or "") + (c.text or "") for c in case)
    if "error" in kinds and "pycocotools" in message and not case.get("classname"):
        uncollectable.append(case.get("name"))  # a module that could not be collected
    elif "failure" in kinds or "error" in kinds:
        failed += 1
    elif "skipped" in kinds:
        skipped += 1
    else:
        passed += 1
print(f"[gpu_check] cuda tests: {passed} passed, {failed} failed, {skipped} skipped")
if uncollectable:
    print("[gpu_check] not collected (no pycocotools here): " + ", ".join(sorted(uncollectable)))
sys.exit(1 if failed or passed == 0 else 0)
PY
fi

# ---- 3. compute-sanitizer --------------------------------------------------------------------
if ((DRY)); then
  emu=cpu
  "$PY" -c "import idip.ops as o; assert o.load_cuda_emulation()" >/dev/null 2>&1 && emu=cuda-emu
  run_step "exercise_kernels.py (on $emu; sanitizer not run)" 120 sanitizer.log \
    "$PY" tools/exercise_kernels.py --device "$emu"
  command -v compute-sanitizer >/dev/null && note "compute-sanitizer" "found" || note "compute-sanitizer" "not on PATH here"
else
  run_step "compute-sanitizer memcheck" 90 sanitizer.log \
    compute-sanitizer --tool memcheck --error-exitcode 3 "$PY" tools/exercise_kernels.py --device cuda
  # racecheck serialises every kernel it checks: only ours (names in namespace idip).
  run_step "compute-sanitizer racecheck (idip kernels)" 90 sanitizer.log \
    compute-sanitizer --tool racecheck --racecheck-report hazard --error-exitcode 3 \
    --kernel-regex kns=idip "$PY" tools/exercise_kernels.py --device cuda
fi

# ---- 4. benchmarks ---------------------------------------------------------------------------
ops_json=benchmarks/results/$slug.json
model_json=benchmarks/results/model-$slug.json
if ((DRY)); then
  run_step "bench_ops.py (arguments checked)" 60 bench.log "$PY" benchmarks/bench_ops.py --help
  run_step "bench_model.py (arguments checked)" 60 bench.log "$PY" benchmarks/bench_model.py --help
else
  run_step "bench_ops.py --device cuda" 70 bench.log \
    "$PY" benchmarks/bench_ops.py --device cuda --reps 20 --warmup 5 --no-compile-reference \
    --out "$ops_json" && cp "$ops_json" "$OUT/bench_ops.json"
  run_step "bench_model.py --device cuda" 130 bench.log \
    "$PY" benchmarks/bench_model.py --device cuda --reps 5 --warmup 2 --out "$model_json" \
    && cp "$model_json" "$OUT/bench_model.json"
fi

# ---- summary ---------------------------------------------------------------------------------
{
  echo "# GPU check $( ((DRY)) && echo '(dry run)')"
  echo
  echo "- device: $device"
  echo "- torch: $torch_info"
  echo "- commit: $commit"
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "- total: $(($(now) - T0)) s of a $BUDGET s budget"
  echo
  echo "| step | result | seconds | log |"
  echo "| --- | --- | --- | --- |"
  printf '%s\n' "${ROWS[@]}"
} >"$SUMMARY"
cat "$SUMMARY"
exit $FAILED
