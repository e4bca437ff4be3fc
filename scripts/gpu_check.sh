#!/usr/bin/env bash
# The one-call check on a GPU machine whose Python has a CUDA build of torch and
# whose CUDA toolkit is in /usr/local/cuda (no network needed; torch is never
# installed or replaced): versions, build, the CUDA tests, compute-sanitizer
# (memcheck, racecheck, initcheck) over a subset of them, the benchmark suite and the
# peak-memory comparison. Every step runs whatever happened to the others; each
# one's exit status (124: over its time limit) and duration go to $OUT/summary.txt,
# its output to $OUT/<step>.log. STEPS picks steps, so that a session whose
# commands are limited to 10 minutes can split the run (the build is kept):
#   bash scripts/gpu_check.sh                          # every step; OUT=./gpu-out
#   STEPS="versions build tests" bash scripts/gpu_check.sh
#   STEPS="build memcheck racecheck initcheck" bash scripts/gpu_check.sh
#   STEPS="build bench memory" bash scripts/gpu_check.sh
#   OUT=/tmp/run PYTHON=python3.12 bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-$PWD/gpu-out} PY=${PYTHON:-python3}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export FORCE_CUDA=1 PATH="$CUDA_HOME/bin:$PATH"
# Tests that reach every kernel with odd shapes, strides, far and non-finite points:
# where an out-of-bounds access or an uninitialised read would be.
# The property tests (a few examples each) add random layouts and edge coordinates; the
# concurrency tests, several streams and threads.
export SANITIZED="cuda and (matches_torch or memory_layouts or huge_coordinates or non_finite or empty or property or streams or threads or deterministic)"
mkdir -p "$OUT"
: > "$OUT/summary.txt"
status=0

versions() {
  echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(date -u +%FT%TZ)"
  nvidia-smi
  "$PY" -c 'import sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "CUDA", torch.version.cuda,
      "cuDNN", torch.backends.cudnn.version())
print("GPU", torch.cuda.get_device_name() if torch.cuda.is_available() else None)'
  nvcc --version
  compute-sanitizer --version
}

sanitize() {  # sanitize TOOL: the SANITIZED tests under compute-sanitizer --tool TOOL
  # Without the caching allocator every tensor is its own allocation, so memcheck sees
  # an access past a tensor's end.
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 STN_HYPOTHESIS_PROFILE=quick compute-sanitizer --tool "$1" --error-exitcode 99 \
    "$PY" -m pytest -q -p no:cacheprovider tests -k "$SANITIZED" --junitxml="$OUT/$1.xml"
}
export -f versions sanitize

STEPS=${STEPS:-versions build tests bench memory memcheck racecheck initcheck}

step() {  # step NAME LIMIT_S COMMAND...: COMMAND (a program or a function above) in $OUT/NAME.log
  local name=$1 limit=$2 start=$SECONDS rc=0
  shift 2
  case " $STEPS " in *" $name "*) ;; *) return 0 ;; esac
  echo "== $name: $*"
  timeout --kill-after=10 "$limit" bash -c '"$@"' bash "$@" > "$OUT/$name.log" 2>&1 || rc=$?
  tail -n 12 "$OUT/$name.log"
  printf '%-10s rc=%-4s %5ss  %s\n' "$name" "$rc" "$((SECONDS - start))" "$*" | tee -a "$OUT/summary.txt"
  [ "$rc" = 0 ] || status=1
}

step versions 60 versions
step build 300 "$PY" -m pip install --disable-pip-version-check --no-build-isolation --no-deps -e .
step tests 420 "$PY" -m pytest -q tests -k cuda --junitxml="$OUT/tests.xml"
step bench 300 "$PY" -m benchmarks --out "$OUT/bench"
step memory 120 "$PY" -m benchmarks.memory --out "$OUT/memory.json"
for tool in memcheck racecheck initcheck; do
  step "$tool" 120 sanitize "$tool"
done
echo "== summary ($OUT/summary.txt)"
cat "$OUT/summary.txt"
exit $status
