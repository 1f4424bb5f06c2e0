#!/usr/bin/env bash
# One GPU session, 6 minutes at most on an H200, whatever hangs, most important first:
#   1. versions (GPU, driver, torch, triton)
#   2. `bihm-triton validate --device cuda --json` (every op against the reference), then the GPU tier of the tests, compiled on the GPU (BIHM_TEST_TIER=gpu, about a minute)
#   3. the fused sampler's tiling sweep (bench/chain_sweep.py: samples/s, host µs per call, CUDA graph)
#   4. the benchmark suites, providers torch / torch_compile / torch_compile_ro / triton
#      (pytest-benchmark; JSON per part and one JSONL log written as it goes): ancestral sampling,
#      then training step + log-likelihood + Gibbs, then the layer op
#   5. an Nsight Compute profile of the fused sampler (Speed of Light, occupancy), if ncu is there
#   6. roofline.py --measure (HBM copy, matmuls, Philox/epilogue kernels) and the floors
#   7. the compact table, LAST.
# Every step runs under `timeout`, clipped to what is left of BIHM_GPU_BUDGET_S (default 450 s),
# and a failing or timed-out step does not stop the next one (the JSONL keeps partial results).
#
# Usage, from any folder:  bash bench/gpu.sh
# Output: exactly three files in $OUT if set (the device runner's folder, which brings back only a
# few files), else in bench/results/gpu-<UTC time>/ (which also keeps the loose files):
#   table.md        the results table (markdown; a placeholder until the last step writes it)
#   gpu.log         everything the script printed
#   results.tar.gz  everything else: versions.txt, <step>.log, kernel_tests.xml, chain_sweep.json,
#                   validate.json, bench_<part>.json (pytest-benchmark), bench.jsonl, ncu.txt, ceilings.json,
#                   roofline.txt, table.txt
# The archive is rewritten after every step and on exit (a shell trap, also on SIGTERM/SIGINT), so
# a run stopped by a time limit still leaves the set with what it had measured.
# Knobs: BIHM_GPU_BUDGET_S, BIHM_GPU_SKIP_TESTS=1, BIHM_BENCH_SIZE (default full),
#   BIHM_BENCH_PROVIDERS (default all four), BIHM_CHAIN_CONFIG (the sampler's tiling), PYTHON,
#   BIHM_GPU_DRY_RUN=1 (print each step's command instead of running it: the output layout, on a CPU;
#   BIHM_GPU_DRY_STEP_S seconds of sleep per step).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
BUDGET_S=${BIHM_GPU_BUDGET_S:-450}
DRY=${BIHM_GPU_DRY_RUN:-0}
T0=$(date +%s)
if [[ -n "${OUT:-}" ]]; then
  FINAL=$OUT                                           # the three files
  DEST=$(mktemp -d "${TMPDIR:-/tmp}/bihm-gpu.XXXXXX")  # everything else, archived into $FINAL
else
  FINAL=$ROOT/bench/results/gpu-$(date -u +%Y%m%dT%H%M%SZ)
  DEST=$FINAL
fi
mkdir -p "$FINAL" "$DEST"
echo "no benchmark results (yet): see gpu.log and results.tar.gz" > "$FINAL/table.md"
exec > >(tee -a "$FINAL/gpu.log") 2>&1
TEE_PID=$!
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET BIHM_BENCH_DEVICE BIHM_TEST_DEVICE

log() { echo "[gpu.sh +$(( $(date +%s) - T0 ))s] $*"; }
left() { echo $(( BUDGET_S - ($(date +%s) - T0) )); }
# archive: everything in $DEST but the two loose files, into $FINAL/results.tar.gz (atomically)
archive() {
  tar -czf "$FINAL/.results.tar.gz.tmp" -C "$DEST" --exclude=./gpu.log --exclude=./table.md \
    --exclude=./results.tar.gz --exclude=./.results.tar.gz.tmp . 2>/dev/null \
    && mv -f "$FINAL/.results.tar.gz.tmp" "$FINAL/results.tar.gz"
}
finish() {
  local rc=$?
  trap - EXIT TERM INT
  [[ -n "$STEP_PID" ]] && kill -TERM "$STEP_PID" 2>/dev/null && wait "$STEP_PID" 2>/dev/null
  archive
  [[ "$DEST" != "$FINAL" ]] && rm -rf "$DEST"
  log "done (rc=$rc): $FINAL holds table.md, gpu.log, results.tar.gz"
  exec 1>&- 2>&-
  wait "$TEE_PID" 2>/dev/null  # gpu.log complete before the script ends
  exit "$rc"
}
trap finish EXIT
trap 'log "stopped by a signal"; exit 143' TERM INT
STEPS=()
STEP_PID=
# step NAME LIMIT_S RESERVE_S CMD...: run CMD for at most min(LIMIT_S, time left - RESERVE_S)
# seconds (RESERVE_S is kept for the steps after it), its output into $DEST/NAME.log and gpu.log.
# The step runs in the background and is waited for, so a signal reaches the trap at once.
step() {
  local name=$1 limit=$2 reserve=$3; shift 3
  local avail=$(( $(left) - reserve ))
  local lim=$(( limit < avail ? limit : avail ))
  if (( lim < 10 )); then
    log "SKIP $name: out of time"
    STEPS+=("$name=skipped")
    return 124
  fi
  log "START $name (limit ${lim}s): $*"
  if [[ "$DRY" == 1 ]]; then
    set -- sh -c 'sleep "$1"; shift; echo "dry run: $*"' sh "${BIHM_GPU_DRY_STEP_S:-0}" "$@"
  fi
  # `timeout` in the background (its PID in STEP_PID: the trap's kill reaches the command through it)
  timeout -k 5 "$lim" "$@" > >(tee "$DEST/$name.log") 2>&1 &
  STEP_PID=$!
  wait "$STEP_PID"
  local rc=$?
  STEP_PID=
  log "END $name: rc=$rc$( ((rc == 124 || rc == 137)) && echo ' (timed out)')"
  STEPS+=("$name=$rc")
  archive
  return "$rc"
}

# ---------------------------------------------------------------------------------- 1. versions
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "repo: $ROOT ($(git rev-parse --short HEAD 2>/dev/null || echo 'no git'))"
  timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv 2>&1
  timeout 60 "$PY" - <<'EOF' 2>&1
import platform, torch
print("python", platform.python_version())
print("torch", torch.__version__, "cuda", torch.version.cuda)
try:
    import triton
    print("triton", triton.__version__)
except Exception as e:  # noqa: BLE001
    print("triton import failed:", e)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", torch.cuda.get_device_name(0), f"sm_{p.major}{p.minor}", p.multi_processor_count, "SMs",
          round(p.total_memory / 2**30, 1), "GiB")
else:
    print("NO CUDA DEVICE: the benchmarks will run the CPU tier")
EOF
  timeout 20 "$PY" -m pip list 2>/dev/null | grep -i -E '^(torch|triton|pytest|pytest-benchmark|numpy|setuptools) ' || true
} | tee "$DEST/versions.txt"

# ------------------------------------------------------------------------- the package, importable
check_import() {
  timeout 60 "$PY" - <<'EOF'
import os, bihm_triton, bihm_triton.kernels, bihm_triton.reference  # noqa: E401
here = os.path.realpath(os.getcwd())
where = os.path.realpath(bihm_triton.__file__)
assert where.startswith(here + os.sep), f"bihm_triton comes from {where}, not from {here}"
print("bihm_triton from", where)
EOF
}
if ! check_import >/dev/null 2>&1; then
  # an editable install needs no network with --no-index and the image's setuptools
  step install 60 280 "$PY" -m pip install --no-deps --no-index --no-build-isolation -q -e .
  if ! check_import >/dev/null 2>&1; then
    # last resort: a shadow package of symlinks (kernels/ and reference/ are subpackages of bihm_triton)
    SHADOW=$(mktemp -d)/pkg
    mkdir -p "$SHADOW/bihm_triton"
    for f in "$ROOT"/bihm_triton/*; do ln -s "$f" "$SHADOW/bihm_triton/"; done
    ln -s "$ROOT/kernels" "$SHADOW/bihm_triton/kernels"
    ln -s "$ROOT/reference" "$SHADOW/bihm_triton/reference"
    export PYTHONPATH="$SHADOW${PYTHONPATH:+:$PYTHONPATH}"
    log "pip install failed: using a symlinked package at $SHADOW"
  fi
fi
check_import 2>&1 | tee -a "$DEST/versions.txt" || log "WARNING: bihm_triton is not importable from $ROOT"

# ------------------------------------------------------- 2. the install checked against the reference
# `bihm-triton validate`: every op on odd/prime shapes against the reference, one row per check (JSON in the archive)
step validate 90 300 "$PY" -m bihm_triton.validation --device cuda --no-progress --json "$DEST/validate.json"

# ------------------------------------------------------------------------------ 2b. GPU test tier
if [[ "${BIHM_GPU_SKIP_TESTS:-0}" != 1 ]]; then
  BIHM_TEST_DEVICE=cuda BIHM_TEST_TIER=gpu step gpu_tests 75 270 "$PY" -m pytest -q -p no:cacheprovider \
    --junitxml="$DEST/kernel_tests.xml" tests/
fi

# ---------------------------------------------------------------------- 3. the fused sampler's tiling
step chain_sweep 70 200 "$PY" bench/chain_sweep.py --budget 45 --json "$DEST/chain_sweep.json"

# ------------------------------------------------------------------------------ 4. benchmarks
# Each part is its own pytest run (a hang costs one part); every result is also appended to
# bench.jsonl as soon as it is measured. The reserves keep time for the later parts, the roofline
# and the table.
export BIHM_BENCH_JSONL="$DEST/bench.jsonl"
BENCH_OPTS=(--benchmark-only -q -p no:cacheprovider -rs --benchmark-columns=median,rounds --benchmark-sort=name)
step bench_ancestral 90 110 "$PY" -m pytest "${BENCH_OPTS[@]}" --benchmark-json="$DEST/bench_ancestral.json" \
  bench/test_bench_ancestral.py
step bench_train_loglik_gibbs 80 40 "$PY" -m pytest "${BENCH_OPTS[@]}" \
  --benchmark-json="$DEST/bench_train_loglik_gibbs.json" \
  bench/test_bench_train.py bench/test_bench_loglik.py bench/test_bench_gibbs.py
step bench_layer 40 30 "$PY" -m pytest "${BENCH_OPTS[@]}" --benchmark-json="$DEST/bench_layer.json" \
  bench/test_bench_layer.py

# ------------------------------------------------------------------ 5. Nsight Compute, fused sampler
if command -v ncu >/dev/null 2>&1; then
  step ncu 40 25 ncu --target-processes all -k regex:fused_chain --launch-skip 2 --launch-count 1 \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section ComputeWorkloadAnalysis \
    "$PY" bench/chain_sweep.py --configs "" --budget 1 --n 131072
  [[ -s "$DEST/ncu.log" ]] && cp "$DEST/ncu.log" "$DEST/ncu.txt"
fi

# --------------------------------------------------------------------------- 4. roofline --measure
RESULTS=()
[[ -s "$DEST/bench.jsonl" ]] && RESULTS=("$DEST/bench.jsonl")
if step roofline_measure 30 10 "$PY" bench/roofline.py --measure --save-ceilings "$DEST/ceilings.json" \
     "${RESULTS[@]/#/--json=}"; then
  cp "$DEST/roofline_measure.log" "$DEST/roofline.txt"
fi

# ------------------------------------------------------------------------------ 5. the table, last
log "steps: ${STEPS[*]}"
if ((${#RESULTS[@]})); then
  CEIL=()
  [[ -s "$DEST/ceilings.json" ]] && CEIL=(--ceilings "$DEST/ceilings.json")
  timeout 30 "$PY" bench/report.py "${RESULTS[@]}" "${CEIL[@]}" --markdown > "$FINAL/table.md" 2>&1
  echo "================================ bihm_triton benchmarks ($(date -u +%Y-%m-%dT%H:%MZ))"
  timeout 30 "$PY" bench/report.py "${RESULTS[@]}" "${CEIL[@]}" 2>&1 | tee "$DEST/table.txt"
else
  echo "no benchmark results were written (see the step logs in results.tar.gz)"
fi
