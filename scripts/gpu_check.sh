#!/usr/bin/env bash
# The one-call check on a GPU machine whose Python has a CUDA build of torch and
# whose CUDA toolkit is in /usr/local/cuda (no network needed; torch is never
# installed or replaced): versions, build, the CUDA tests, the benchmark suite,
# compute-sanitizer (memcheck, racecheck, initcheck) over a subset of the tests and
# the peak-memory comparison and the host cost of a call (benchmarks.overhead),
# in that order of priority; synccheck over the warp scatter's tests (its
# shuffles and ballots name their lanes by mask) last. compute-sanitizer is tried
# on one allocation first: some machines refuse it ("Device not supported", seen
# on gVisor), and then the sanitizer steps are skipped and say so. The tests run
# in 8 processes where pytest-xdist is installed, each test under a 60 s limit
# where pytest-timeout is.
#
# It is sized for one command of a lent machine (10 minutes at most, 15 minutes of
# device time a session): every step runs whatever happened to the others, within
# its own limit and within BUDGET_S seconds for the whole script (default 540), so a
# step that would start too late is skipped and says so. Few files come back from a
# device call (8), so everything lands in at most six:
#   $OUT/summary.txt    each step's exit status (124: over its time limit), duration
#                       and the end of its output
#   $OUT/steps.log      every step's whole output, in order
#   $OUT/bench/results.{json,md}, $OUT/bench/speedup.png   the benchmark suite
#   $OUT/memory.json    the peak-memory comparison
# STEPS picks steps (the build is kept between calls on a warm machine):
#   bash scripts/gpu_check.sh                                     # every step; OUT=./gpu-out
#   STEPS="build tests" bash scripts/gpu_check.sh
#   STEPS="build sanitizer memcheck racecheck initcheck" BUDGET_S=580 bash scripts/gpu_check.sh
#   OUT=/tmp/run PYTHON=python3.12 bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-$PWD/gpu-out} PY=${PYTHON:-python3} PYTHONUNBUFFERED=1
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export FORCE_CUDA=1 PATH="$CUDA_HOME/bin:$PATH" MAX_JOBS=${MAX_JOBS:-$(nproc)}
# Tests that reach every kernel with odd shapes, strides, far and non-finite points:
# where an out-of-bounds access or an uninitialised read would be (about 600 tests;
# files in order of priority, since a sanitizer step may run out of time first).
export SANITIZED="cuda and (test_matches_torch or test_memory_layouts or test_non_finite or test_empty or test_affine_sample_matches_composition or test_affine_grid_matches_torch or test_cuda_streams or (test_grid_sample_gradients and (odd or special)) or warp_scatter_matches_torch or warp_scatter_bad_points or channel_vectors_match_torch or channel_vectors_bad_points or channel_vectors_fall_back or channel_vectors_strided)"
export SANITIZED_FILES="tests/test_grid_sample.py tests/test_scatter.py tests/test_channel_vectors.py tests/test_volume.py tests/test_deterministic.py tests/test_affine.py tests/test_concurrency.py"
BUDGET_S=${BUDGET_S:-540}
mkdir -p "$OUT"
: > "$OUT/summary.txt"
: > "$OUT/steps.log"
status=0

versions() {
  echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(date -u +%FT%TZ)"
  nvidia-smi
  "$PY" -c 'import sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "CUDA", torch.version.cuda,
      "cuDNN", torch.backends.cudnn.version())
print("GPU", torch.cuda.get_device_name() if torch.cuda.is_available() else None)'
  nvcc --version | tail -n 2
  compute-sanitizer --version | head -n 2
}

sanitize() {  # sanitize TOOL [FILES [EXPR]]: the tests under compute-sanitizer --tool TOOL
  # Without the caching allocator every tensor is its own allocation, so memcheck sees
  # an access past a tensor's end.
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 STN_HYPOTHESIS_PROFILE=quick compute-sanitizer --tool "$1" \
    --error-exitcode 99 "$PY" -m pytest -q -p no:cacheprovider ${2:-$SANITIZED_FILES} -k "${3:-$SANITIZED}"
}

sanitizer_runs() {  # compute-sanitizer on one allocation and one kernel
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 99 \
    "$PY" -c 'import torch; print(torch.ones(1, device="cuda").add(1).item())'
}

tests() {  # the CUDA tests (-rfE: the failures and errors named at the end)
  local extra=()
  "$PY" -c 'import xdist' 2>/dev/null && extra+=(-n 8)
  "$PY" -c 'import pytest_timeout' 2>/dev/null && extra+=(--timeout=60)
  "$PY" -m pytest -q -rfE -p no:cacheprovider "${extra[@]}" \
    tests -k cuda --durations=15
}
export -f versions sanitize sanitizer_runs tests

STEPS=${STEPS:-versions build tests bench sanitizer memcheck memory overhead racecheck initcheck synccheck}

step() {  # step NAME LIMIT_S COMMAND...: COMMAND (a program or a function above)
  local name=$1 limit=$2 start=$SECONDS rc=0 log="$OUT/.$1.log"
  shift 2
  case " $STEPS " in *" $name "*) ;; *) return 0 ;; esac
  if [ "$1" = sanitize ] && [ "$sanitizer" != runs ]; then
    printf '%-10s skipped: compute-sanitizer %s\n' "$name" "$sanitizer" | tee -a "$OUT/summary.txt"
    status=1
    return 0
  fi
  local left=$((BUDGET_S - SECONDS))
  if [ "$left" -lt 20 ]; then
    printf '%-10s skipped: %ss of the %ss budget left\n' "$name" "$left" "$BUDGET_S" | tee -a "$OUT/summary.txt"
    status=1
    return 0
  fi
  [ "$limit" -le "$left" ] || limit=$left
  echo "== $name (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" bash -c '"$@"' bash "$@" > "$log" 2>&1 || rc=$?
  { echo "== $name: $*"; cat "$log"; } >> "$OUT/steps.log"
  printf '%-10s rc=%-4s %5ss  %s\n' "$name" "$rc" "$((SECONDS - start))" "$*" | tee -a "$OUT/summary.txt"
  tail -n 8 "$log" | sed 's/^/    /' | tee -a "$OUT/summary.txt"
  rm -f "$log"
  last_rc=$rc
  [ "$rc" = 0 ] || status=1
}

step versions 30 versions
step build 300 "$PY" -m pip install --disable-pip-version-check --no-build-isolation --no-deps -e .
step tests 180 tests
step bench 150 "$PY" -m benchmarks --reps 30 --out "$OUT/bench"
sanitizer="was not tried (STEPS has no sanitizer step)"
case " $STEPS " in *" sanitizer "*)
  sanitizer="does not run here (see its step in summary.txt)"
  last_rc=1
  step sanitizer 60 sanitizer_runs
  [ "$last_rc" != 0 ] || sanitizer=runs ;;
esac
step memcheck 90 sanitize memcheck
step memory 30 "$PY" -m benchmarks.memory --out "$OUT/memory.json"
step overhead 20 "$PY" -m benchmarks.overhead --device cuda --calls 500 --rounds 5
step racecheck 60 sanitize racecheck
step initcheck 60 sanitize initcheck
step synccheck 45 sanitize synccheck tests/test_scatter.py "cuda and (matches_torch or bad_points or zoomed_in)"
echo "== summary ($OUT/summary.txt)"
cat "$OUT/summary.txt"
exit $status
